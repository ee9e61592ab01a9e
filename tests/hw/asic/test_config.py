"""The .cfg reader: SCALE-Sim's files read, bad files fail naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from qatlab.hw.asic import ArrayConfig, ConfigError

DATA = Path(__file__).parent / "data"

MINIMAL = """[general]
run_name = t

[architecture_presets]
ArrayHeight:    8
ArrayWidth:     4
IfmapSramSzkB:   2
FilterSramSzkB:  2
OfmapSramSzkB:   1
Dataflow : ws
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.cfg"
    p.write_text(text)
    return p


def test_reads_scalesim_shipped_configs():
    scale = ArrayConfig.from_cfg(DATA / "configs" / "scale.cfg")
    assert (scale.rows, scale.cols, scale.dataflow, scale.bandwidth_mode) == (32, 32, "os", "CALC")
    assert (scale.ifmap_sram_kb, scale.filter_sram_kb, scale.ofmap_sram_kb) == (64, 64, 64)
    google = ArrayConfig.from_cfg(DATA / "configs" / "google.cfg")
    assert (google.rows, google.cols, google.dataflow, google.bandwidth_mode) == (256, 256, "ws", "USER")
    assert google.bandwidth == (10,) and google.ifmap_bank_bandwidth == 10
    assert (google.ifmap_sram_kb, google.ofmap_sram_kb) == (6144, 2048)


def test_minimal_and_v2_style_configs_take_scalesim_defaults(tmp_path):
    c = ArrayConfig.from_cfg(write(tmp_path, MINIMAL))
    assert (c.rows, c.cols, c.dataflow, c.bandwidth_mode, c.filter_offset) == (8, 4, "ws", "CALC", 10_000_000)
    assert c.where("rows").endswith("c.cfg:5")


def test_overrides_and_qatlab_section(tmp_path):
    c = ArrayConfig.from_cfg(write(tmp_path, MINIMAL + "\n[qatlab]\nfreq_mhz = 700\npack = 0\n"), dataflow="os")
    assert (c.freq_mhz, c.pack, c.dataflow) == (700.0, 0, "os")


@pytest.mark.parametrize(
    "edit, line, words",
    [
        (("ArrayWidth:     4", "ArrayWidth:     0"), 6, ["ArrayWidth", "positive"]),
        (("ArrayWidth:     4", "ArrayWidth:     -3"), 6, ["ArrayWidth", "positive"]),
        (("ArrayWidth:     4", "ArrayWidth:     four"), 6, ["ArrayWidth", "integer"]),
        (("Dataflow : ws", "Dataflow : rs"), 10, ["Dataflow", "os, ws or is"]),
        (("OfmapSramSzkB:   1\n", ""), 4, ["ofmapsramszkb"]),
        (("ArrayHeight:    8", "ArrayHeight 8"), 5, ["malformed"]),
        (("[general]", "run_name = x\n[general]"), 1, ["no [section]"]),
    ],
)
def test_bad_configs_name_file_line_field(tmp_path, edit, line, words):
    p = write(tmp_path, MINIMAL.replace(*edit))
    with pytest.raises(ConfigError) as ei:
        ArrayConfig.from_cfg(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:{line}:"), msg
    for w in words:
        assert w in msg


def test_user_mode_needs_bandwidth_and_rejects_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="Bandwidth"):
        ArrayConfig.from_cfg(write(tmp_path, MINIMAL + "\n[run_presets]\nInterfaceBandwidth: USER\n"))
    with pytest.raises(ConfigError, match=r"c\.cfg:11: field 'Bandwidth'"):
        ArrayConfig.from_cfg(write(tmp_path, MINIMAL + "Bandwidth : 10, x\n"))
    with pytest.raises(ConfigError, match="CALC or USER"):
        ArrayConfig.from_cfg(write(tmp_path, MINIMAL + "\n[run_presets]\nInterfaceBandwidth: FAST\n"))
    with pytest.raises(ConfigError, match="unknown field 'speed'"):
        ArrayConfig.from_cfg(write(tmp_path, MINIMAL + "\n[qatlab]\nspeed = 3\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        ArrayConfig.from_cfg(tmp_path / "missing.cfg")


def test_unsupported_scalesim_features_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="custom SRAM layouts"):
        ArrayConfig.from_cfg(write(tmp_path, MINIMAL + "\n[layout]\nIfmapCustomLayout: True\n"))
    with pytest.raises(ConfigError, match="Ramulator"):
        ArrayConfig.from_cfg(write(tmp_path, MINIMAL + "\n[run_presets]\nUseRamulatorTrace: True\n"))


def test_constructor_validates():
    with pytest.raises(ConfigError, match="rows"):
        ArrayConfig(rows=0)
    with pytest.raises(ConfigError, match="dataflow"):
        ArrayConfig(dataflow="xs")
    with pytest.raises(ConfigError, match="freq_mhz"):
        ArrayConfig(freq_mhz=0)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "extra, second, first, words",
    [
        ("ArrayWidth: 8\n", 11, 6, "field 'arraywidth' given twice in [architecture_presets]"),
        ("\n[general]\nrun_name = u\n", 12, 1, "section [general] given twice"),
        ("\n[qatlab]\npack = 0\nPACK = 2\n", 14, 13, "field 'pack' given twice in [qatlab]"),
    ],
)
def test_duplicates_name_both_lines(tmp_path, extra, second, first, words):
    p = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as e:
        ArrayConfig.from_cfg(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{second}: ") and f"(first at {p}:{first})" in msg and words in msg


def test_a_continuation_line_is_not_taken_for_the_first_occurrence(tmp_path):
    # An indented line continues the value above it; only the real option line counts.
    p = write(tmp_path, MINIMAL + "[qatlab]\nfreq_mhz = 1\n  pack = 9\npack = 0\npack = 2\n")
    with pytest.raises(ConfigError, match=rf"{p}:15: .*\(first at {p}:14\)"):
        ArrayConfig.from_cfg(p)


@pytest.mark.parametrize(
    "text, words",
    [
        (b"\xff\xfe[general]", "not UTF-8 text"),
        (MINIMAL.encode() + b"\x00", "NUL byte"),
        (MINIMAL.replace("Dataflow : ws", "Dataflow : %(x)s").encode(), "'Dataflow' must be os, ws or is"),
        (MINIMAL.encode() + b"[qatlab]\nvdd = inf\n", "'vdd' must be a finite number"),
        (MINIMAL.encode() + b"[qatlab]\nfreq_mhz = nan\n", "'freq_mhz' must be a finite number"),
    ],
)
def test_bytes_percent_signs_and_non_finite_numbers(tmp_path, text, words):
    p = tmp_path / "c.cfg"
    p.write_bytes(text)
    with pytest.raises(ConfigError, match=words):
        ArrayConfig.from_cfg(p)


def test_a_folder_or_a_device_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        ArrayConfig.from_cfg(tmp_path)
    with pytest.raises(ConfigError, match="larger than"):
        ArrayConfig.from_cfg("/dev/zero")


@pytest.mark.parametrize("field, value", [("freq_mhz", "1e-320"), ("freq_mhz", "1e9"), ("vdd", "1e300"), ("node_nm", "1e-300")])
def test_float_knobs_outside_their_physical_range(tmp_path, field, value):
    p = write(tmp_path, MINIMAL + f"\n[qatlab]\n{field} = {value}\n")
    with pytest.raises(ConfigError, match=rf"{p}:13: field '{field}' must be between"):
        ArrayConfig.from_cfg(p)
    # The same bound holds for a value given as an override (the CLI's --vdd and friends).
    with pytest.raises(ConfigError, match=f"{field} overridden: field '{field}' must be between"):
        ArrayConfig.from_cfg(write(tmp_path, MINIMAL), **{field: float(value)})
