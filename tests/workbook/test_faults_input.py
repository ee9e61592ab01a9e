"""Hostile input to the commands that read files: every fault is one line on stderr and
exit 2 (or 1 for a run that failed), never a traceback, and nothing half-written is left.
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbook.cli import main

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "examples" / "scale.cfg"
TOPO = ROOT / "examples" / "lenet.csv"
HEADER = "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``workbook.cli.main`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's usage errors
            rc = e.code if isinstance(e.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def assert_one_line(rc: int, err: str, code: int = 2) -> str:
    assert rc == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("workbook: error:"), err
    assert "Traceback" not in err and "rerun with --debug" not in err, err
    return lines[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- random bytes and broken variants as spec, cfg and topology -------------------------

CFG_TEXT = CFG.read_text()
TOPO_TEXT = TOPO.read_text()
SPEC_TEXT = "name: t\ngrid: {method: [ptq]}\ntrain: {epochs: 1}\n"

# Structured but wrong: a valid file cut short, with a line doubled, with bytes flipped to
# non-UTF-8, with NULs, or a valid file of another kind.
_structured = st.sampled_from(
    [
        CFG_TEXT[: len(CFG_TEXT) // 2].encode(),
        TOPO_TEXT.replace("32", "-32").encode(),
        TOPO_TEXT.replace("30, 30", "0, 30").encode(),
        TOPO_TEXT.replace("3136", "nan").encode(),
        (HEADER + "x, 1e999, 3, 3, 3, 1, 8, 1,\n").encode(),
        (HEADER + "x, 4, 4, 3, 3, 1, 8, 0,\n").encode(),
        SPEC_TEXT.replace("epochs: 1", "epochs: 1, epochs: 2").encode(),
        (SPEC_TEXT + "grid: {seed: [1]}\n").encode(),
        b"[" * 5000,
        b"{a: " * 3000,
        b"\xff\xfe" + "name: t".encode("utf-16-le"),
        CFG_TEXT.encode() + b"\x00",
        CFG_TEXT.encode().replace(b"ArrayHeight", b"Array\xe9Height"),
        TOPO_TEXT.encode() * 2,  # the header again as a layer row
        b"",
        b"\n\n\n",
        CFG_TEXT.replace("[layout]", "[architecture_presets]").encode(),
        CFG_TEXT.replace("ArrayWidth:     32", "ArrayWidth:     32\nArrayWidth: 8").encode(),
        CFG_TEXT.replace("freq_mhz = 1000", "freq_mhz = nan").encode(),
        CFG_TEXT.replace("ArrayHeight:    32", "ArrayHeight:    0").encode(),
        CFG_TEXT.replace("Dataflow : ws", "Dataflow : %(x)s").encode(),
    ]
)
_garbage = st.one_of(st.binary(min_size=0, max_size=600), _structured)


def _argv(kind: str, path: Path, tmp: Path) -> list[str]:
    if kind == "spec":
        return ["sweep", str(path), "--dry-run", "--out", str(tmp / "runs")]
    if kind == "cfg":
        return ["sim", "asic", "--config", str(path), "--topology", str(TOPO)]
    if kind == "topology-asic":
        return ["sim", "asic", "--config", str(CFG), "--topology", str(path)]
    return ["sim", "fpga", "--device", "ZCU104", "--topology", str(path), "--no-schedule"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=_garbage, kind=st.sampled_from(["spec", "cfg", "topology-asic", "topology-fpga"]))
def test_garbage_files_give_one_line_and_exit_2(tmp_path, data, kind):
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    rc, out, err = run_cli(_argv(kind, path, tmp_path))
    if rc == 0:
        # Random bytes can be a valid file by chance only for the lenient readers; then
        # there is no error line at all and the output is the report.
        assert err.strip() == "" or err.startswith("workbook: note:"), err
        assert data.strip(), "an empty file must never succeed"
        return
    assert_one_line(rc, err)


# ---- missing, folder, device, empty ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["spec", "cfg", "topology-asic", "topology-fpga"])
@pytest.mark.parametrize("target", ["missing", "folder", "empty", "dev-zero"])
def test_unreadable_inputs(tmp_path, kind, target):
    path = {"missing": tmp_path / "nope.txt", "folder": tmp_path, "empty": tmp_path / "empty", "dev-zero": Path("/dev/zero")}[target]
    if target == "empty":
        path.write_bytes(b"")
    rc, _, err = run_cli(_argv(kind, path, tmp_path))
    line = assert_one_line(rc, err)
    assert str(path) in line or path.name in line


# ---- defect 1: duplicate keys ---------------------------------------------------------------


def test_duplicate_include_in_a_spec_names_both_lines(tmp_path):
    spec = tmp_path / "dup.yaml"
    spec.write_text("name: d\ninclude:\n  - {method: qat, bits: 4}\n  - {method: qat, bits: 8}\ninclude:\n  - {method: ptq, bits: 8}\n")
    line = assert_one_line(*run_cli(_argv("spec", spec, tmp_path))[::2])
    assert f"{spec}:5:1" in line and f"{spec}:2:1" in line and "'include'" in line
    assert not (tmp_path / "runs").exists()


def test_duplicate_epochs_in_a_flow_mapping(tmp_path):
    spec = tmp_path / "dup.yaml"
    spec.write_text("name: d\ntrain: {epochs: 1, epochs: 500}\ngrid: {method: [ptq]}\n")
    line = assert_one_line(*run_cli(_argv("spec", spec, tmp_path))[::2])
    assert f"{spec}:2:20" in line and f"{spec}:2:9" in line


@pytest.mark.parametrize(
    "edit, second, first",
    [
        (("ArrayWidth:     32", "ArrayWidth:     32\narraywidth: 8"), 12, 11),
        (("[run_presets]", "[layout]\nIfmapSRAMBankNum: 3\n\n[run_presets]"), 41, 24),
    ],
)
def test_duplicate_option_or_section_in_a_cfg_names_both_lines(tmp_path, edit, second, first):
    cfg = tmp_path / "dup.cfg"
    text = CFG_TEXT.replace(*edit)
    cfg.write_text(text)
    assert text.splitlines()[second - 1].lower().startswith(edit[1].splitlines()[1 if "Width" in edit[0] else 0].lower()[:8])
    line = assert_one_line(*run_cli(_argv("cfg", cfg, tmp_path))[::2])
    assert f"{cfg}:{second}:" in line and f"{cfg}:{first})" in line


# ---- defect 3: sizes ------------------------------------------------------------------------


def _topology(tmp_path: Path, row: str) -> Path:
    p = tmp_path / "big.csv"
    p.write_text(HEADER + row + "\n")
    return p


@pytest.mark.parametrize("sim", ["topology-asic", "topology-fpga-schedule"])
def test_a_layer_too_large_for_memory_names_the_bytes(tmp_path, sim):
    topo = _topology(tmp_path, "big, 1000000000000, 3, 3, 3, 1, 8, 1,")
    argv = (
        _argv("topology-asic", topo, tmp_path) if sim == "topology-asic" else ["sim", "fpga", "--device", "ZCU104", "--topology", str(topo)]
    )
    line = assert_one_line(*run_cli(argv)[::2])
    assert "bytes) of memory" in line and "are available" in line


def test_huge_depthwise_channel_count_is_refused_before_expansion(tmp_path):
    topo = _topology(tmp_path, "DPc, 30, 30, 3, 3, 1000000000, 1, 1,")
    line = assert_one_line(*run_cli(_argv("topology-asic", topo, tmp_path))[::2])
    assert "layers" in line and ":2" in line


def test_a_grid_of_too_many_trials_is_refused(tmp_path):
    spec = tmp_path / "wide.yaml"
    ten = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"
    spec.write_text(
        f"name: w\ngrid: {{seed: {ten}, epochs: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], lr: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], batch_size: [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]}}\n"
    )
    line = assert_one_line(*run_cli(_argv("spec", spec, tmp_path))[::2])
    assert "11000 trials" in line


# ---- defect 4: bench --json -----------------------------------------------------------------


def test_bench_json_into_a_missing_folder_is_refused_before_running(tmp_path):
    rc, _, err = run_cli(["bench", "sim", "--json", str(tmp_path / "no" / "f.json")])
    assert "no such folder" in assert_one_line(rc, err)


def test_bench_json_that_is_a_folder_is_refused(tmp_path):
    rc, _, err = run_cli(["bench", "fakequant", "--json", str(tmp_path)])
    assert "is a folder" in assert_one_line(rc, err)


_BENCH = """
import json, sys
from pathlib import Path
if {writes} and "--json" in sys.argv:
    Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps({{"from": Path(__file__).stem}}))
sys.exit(0)
"""


def _bench_scripts(root: Path, **writes: bool) -> None:
    for name, w in writes.items():
        (root / f"{name}.py").write_text(_BENCH.format(writes=w))


def test_bench_json_from_a_script_that_writes_nothing_is_an_error(tmp_path, monkeypatch):
    from workbook import bench
    from workbook.errors import CommandError

    _bench_scripts(tmp_path, silent=False)
    monkeypatch.setattr(bench, "JSON_SCRIPTS", frozenset({"silent.py"}))
    out = tmp_path / "figures.json"
    with pytest.raises(CommandError, match="wrote no figures") as e:
        bench.run_scripts(("silent.py",), str(out), root=tmp_path)
    assert e.value.code == 1
    out.write_text("{}")  # a file left from before is not taken for this run's figures
    with pytest.raises(CommandError, match="wrote no figures"):
        bench.run_scripts(("silent.py",), str(out), root=tmp_path)


def test_bench_json_of_several_scripts_is_one_merged_file(tmp_path, monkeypatch):
    import json

    from workbook import bench

    _bench_scripts(tmp_path, a=True, b=True, plain=False)
    monkeypatch.setattr(bench, "JSON_SCRIPTS", frozenset({"a.py", "b.py"}))
    out = tmp_path / "figures.json"
    assert bench.run_scripts(("a.py", "b.py", "plain.py"), str(out), root=tmp_path) == 0
    assert json.loads(out.read_text()) == {"a": {"from": "a"}, "b": {"from": "b"}}
    assert files_in(tmp_path) == ["a.py", "b.py", "figures.json", "plain.py"]  # no part files left


# ---- defect 5: file modes -------------------------------------------------------------------


def test_sim_out_gets_the_mode_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "r.json"
        rc, _, err = run_cli(["sim", "asic", "--config", str(CFG), "--topology", str(TOPO), "--out", str(out)])
    finally:
        os.umask(old)
    assert rc == 0, err
    assert out.stat().st_mode & 0o777 == 0o644


# ---- defect 7: options and output paths -----------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["--out", "/nonexistent-folder/r.json"],
        ["--out", "."],
    ],
)
def test_sim_asic_bad_out(tmp_path, extra):
    rc, _, err = run_cli(["sim", "asic", "--config", str(CFG), "--topology", str(TOPO), *extra])
    assert_one_line(rc, err)
    assert not list(Path("/").glob("nonexistent-folder"))


@pytest.mark.parametrize(
    "extra",
    [
        ["--target-fps", "1e-300"],
        ["--target-fps", "inf"],
        ["--target-fps", "nan"],
        ["--clock-mhz", "1e308"],
        ["--clock-mhz", "nan"],
        ["--clock-mhz", "-5"],
        ["--max-util", "nan"],
        ["--w-bits", "0"],
        ["--acc-bits", "99999999999999999999"],
        ["--save-folding", "/nonexistent-folder/f.json"],
        ["--save-folding", "."],
    ],
)
def test_sim_fpga_bad_numbers_and_paths(extra):
    rc, _, err = run_cli(["sim", "fpga", "--device", "ZCU104", "--topology", str(TOPO), "--no-schedule", *extra])
    assert_one_line(rc, err)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"[1, 2", b'{"conv1": {"PE": 0, "SIMD": 1}}', b'{"conv1": {"PE": NaN}}'])
def test_sim_fpga_bad_folding_files(tmp_path, content):
    f = tmp_path / "fold.json"
    f.write_bytes(content)
    rc, _, err = run_cli(["sim", "fpga", "--device", "ZCU104", "--topology", str(TOPO), "--folding", str(f), "--no-schedule"])
    assert_one_line(rc, err)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
@pytest.mark.parametrize("flag", ["--freq-mhz", "--node-nm", "--vdd"])
def test_sim_asic_non_finite_numbers_are_usage_errors(flag, value):
    rc, _, err = run_cli(["sim", "asic", "--config", str(CFG), "--topology", str(TOPO), flag, value])
    assert rc == 2 and "Traceback" not in err and f"argument {flag}" in err


@pytest.mark.parametrize("extra", [["--vdd", "1e300"], ["--node-nm", "1e-300"], ["--freq-mhz", "1e-320"]])
def test_sim_asic_numbers_that_would_overflow_the_figures(extra):
    rc, out, err = run_cli(["sim", "asic", "--config", str(CFG), "--topology", str(TOPO), *extra])
    assert "must be between" in assert_one_line(rc, err) and out == ""


@pytest.mark.parametrize("field, value", [("vdd", "inf"), ("node_nm", "nan"), ("freq_mhz", "-inf"), ("pack", "-1"), ("vector_lanes", "x")])
def test_cfg_qatlab_section_bad_numbers(tmp_path, field, value):
    cfg = tmp_path / "c.cfg"
    cfg.write_text(
        CFG_TEXT + f"{field} = {value}\n" if field not in ("freq_mhz",) else CFG_TEXT.replace("freq_mhz = 1000", f"freq_mhz = {value}")
    )
    line = assert_one_line(*run_cli(_argv("cfg", cfg, tmp_path))[::2])
    assert field in line


# ---- defect 6: export onnx --check leaves nothing on failure ---------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.hw.asic.test_cli import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("trial"))


@pytest.mark.parametrize(
    "extra",
    [
        ["--check", "--dataset", "/nonexistent/data.npz"],
        ["--check", "--dataset", "no-such-dataset"],
        ["--json", "f.json"],  # --json without --check would write nothing
        ["--check", "--json", "/nonexistent-folder/f.json"],
    ],
)
def test_export_check_failure_leaves_nothing(tmp_path, checkpoint, extra):
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    rc, _, err = run_cli(["export", "onnx", str(checkpoint), str(out), *extra])
    assert_one_line(rc, err)
    assert files_in(out.parent) == []


def test_export_check_failure_inside_the_check_leaves_nothing(tmp_path, checkpoint, monkeypatch):
    import qatlab.export

    def broken(*a, **k):
        raise qatlab.export.ExportError("ONNX Runtime disagrees")

    monkeypatch.setattr(qatlab.export, "compare_onnx", broken)
    monkeypatch.setattr("workbook.export_onnx._test_set", lambda args, im, cfg: (None, None))
    out = tmp_path / "model.onnx"
    rc, _, err = run_cli(["export", "onnx", str(checkpoint), str(out), "--check", "--dataset", "digits"])
    assert "ONNX Runtime disagrees" in assert_one_line(rc, err)
    assert files_in(tmp_path) == []


def test_export_without_check_still_writes(tmp_path, checkpoint):
    out = tmp_path / "model.onnx"
    rc, stdout, err = run_cli(["export", "onnx", str(checkpoint), str(out)])
    assert rc == 0, err
    assert out.is_file() and f"wrote {out}" in stdout
    assert files_in(tmp_path) == ["model.onnx"]


# ---- model files: not torch, empty, a device, a broken archive ------------------------------


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage", b"PK\x03\x04broken zip", b"\x80\x02broken pickle", None])
@pytest.mark.parametrize("command", ["asic", "fpga", "export"])
def test_bad_model_files(tmp_path, content, command):
    path = Path("/dev/zero") if content is None else tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    argv = {
        "asic": ["sim", "asic", "--config", str(CFG), "--model", str(path)],
        "fpga": ["sim", "fpga", "--device", "ZCU104", "--model", str(path)],
        "export": ["export", "onnx", str(path), str(tmp_path / "m.onnx")],
    }[command]
    line = assert_one_line(*run_cli(argv)[::2])
    assert str(path) in line and "cannot read checkpoint" in line or "not a regular file" in line
    assert not (tmp_path / "m.onnx").exists()
