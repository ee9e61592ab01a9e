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
