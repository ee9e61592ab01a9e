"""The README's shell examples work: every path they name exists, every `workbook` line
parses, the fast ones run for real, and the hardware study survives a design that
does not fit its device (the README's `-p fpga_device=PYNQ-Z1` run)."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.hw.asic.test_cli import write_checkpoint, write_intmodel

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Options whose value is a file the command writes, not one it reads.
OUTPUT_OPTIONS = {"--out", "--json", "--save-folding"}
PATHLIKE = re.compile(r"^[\w.\-]+(/[\w.\-]+)+/?$|^[\w.\-]+\.(cfg|csv|md|sh|yaml|yml|py|json|pt)$")
PLACEHOLDER = re.compile(r"[<>\[\]]")
FMNIST_FEATURES = 64 * 7 * 7  # lenet's flattened features on 28x28 inputs


def shell_examples(text: str | None = None) -> list[str]:
    """Each command line of the README's ```sh blocks, its trailing comment removed."""
    text = README.read_text(encoding="utf-8") if text is None else text
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            cmd = re.split(r"\s#\s|^#", line, maxsplit=1)[0].strip()
            if cmd:
                lines.append(cmd)
    return lines


def _argv(line: str) -> list[str]:
    return shlex.split(line)


def named_input_paths(line: str) -> list[str]:
    """The paths a README command reads (its comment included: it may cite a doc)."""
    code = re.split(r"\s#\s", line, maxsplit=1)
    words = _argv(code[0]) + (code[1].replace("(", " ").replace(")", " ").split() if len(code) > 1 else [])
    argv = _argv(code[0])
    outputs = {argv[i + 1] for i, w in enumerate(argv[:-1]) if w in OUTPUT_OPTIONS}
    if argv[:3] == ["workbook", "export", "onnx"]:
        outputs.add(argv[-1])  # export onnx CHECKPOINT OUT.onnx
    return [
        w for w in words
        if PATHLIKE.match(w) and not PLACEHOLDER.search(w) and "://" not in w and w not in outputs
    ]  # fmt: skip


def _readme_raw_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [ln for b in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M) for ln in b.splitlines() if ln.strip()]


def _workbook_lines() -> list[str]:
    return [ln for ln in shell_examples() if ln.startswith("workbook ")]


def _concrete(line: str) -> list[str]:
    """``line``'s argv with the README's placeholders filled: ``[RUN_DIR ...]`` -> RUN_DIR,
    ``[--flag]`` -> --flag, ``<run>``/``<id>`` -> a name."""
    line = re.sub(r"\[([^\]]*?)(\s*\.\.\.)?\]", r"\1", line)
    return _argv(re.sub(r"<(\w+)>", r"\1", line))


def _workbook() -> list[str]:
    """The installed console script (what a user types), else the same entry point via Python."""
    script = Path(sys.executable).parent / "workbook"
    return [str(script)] if script.exists() else [sys.executable, "-m", "workbook.cli"]


def _run(line: str) -> subprocess.CompletedProcess[str]:
    argv = _argv(line)
    assert argv[0] == "workbook"
    return subprocess.run([*_workbook(), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _line(prefix: str) -> str:
    (line,) = [ln for ln in _workbook_lines() if ln.startswith(prefix)]
    return line


# --- the extraction itself ---------------------------------------------------------------------


def test_extraction_finds_the_examples_and_strips_comments():
    sample = "x\n```sh\nmake run    # a comment\n# only a comment\n\nworkbook sim asic --config a.cfg\n```\n```python\nprint(1)\n```\n"
    assert shell_examples(sample) == ["make run", "workbook sim asic --config a.cfg"]
    lines = shell_examples()
    assert {"make run", "make test"} <= set(lines)
    for prefix in (
        "workbook sim asic",
        "workbook sim fpga --topology",
        "workbook sim fpga --model",
        "workbook export onnx",
        "workbook run -p",
    ):
        assert any(ln.startswith(prefix) for ln in lines), prefix
    assert any(".venv/bin/activate" in ln for ln in lines) and any(ln.startswith(".venv/bin/workbook") for ln in lines)


def test_named_input_paths_rule():
    assert named_input_paths("workbook sim asic --config examples/scale.cfg --topology net.csv --out r/x.json") == [
        "examples/scale.cfg",
        "net.csv",
    ]
    assert named_input_paths("workbook run --address ray://head:10001   # see (docs/cluster.md)") == ["docs/cluster.md"]
    assert named_input_paths("workbook export onnx reports/<run>/model.pt model.onnx") == []
    assert named_input_paths("workbook sweep quick --out runs/quick") == []


# --- every path exists, every line parses -------------------------------------------------------


def test_every_path_a_readme_command_names_exists():
    named = sorted({p for line in _readme_raw_lines() for p in named_input_paths(line)})
    assert "examples/scale.cfg" in named and "examples/lenet.csv" in named
    venv = re.search(r"^VENV \?= (\S+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert venv, "the Makefile names the virtualenv the README tells users to activate"
    for p in named:
        if p.startswith(venv.group(1) + "/"):
            continue  # made by `make run` / `make test`, checked below
        assert (ROOT / p).exists(), f"README names {p}, which is not in the repository"
    assert re.search(r'^workbook = "workbook\.cli:main"$', (ROOT / "pyproject.toml").read_text(), flags=re.M)


def test_every_workbook_line_parses():
    from workbook.cli import build_parser

    parser = build_parser()
    lines = _workbook_lines()
    assert len(lines) >= 8
    for line in lines:
        argv = _concrete(line)
        try:
            parser.parse_args(argv[1:])
        except SystemExit as e:  # argparse's way to refuse
            pytest.fail(f"README line does not parse ({e.code}): {line}")


def test_readme_run_parameters_are_known():
    from workbook.main_job import notebook_parameters, parse_params

    argv = _argv(_line("workbook run -p"))
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    train, nbs = parse_params(pairs, notebook_parameters())
    assert train == {"epochs": 1} and nbs == {"fpga_device": "PYNQ-Z1"}


# --- the fast ones, run for real ---------------------------------------------------------------


def test_workbook_help_runs():
    assert ".venv/bin/workbook --help" in shell_examples()
    r = _run("workbook --help")  # that line, with the console script of the running environment
    assert r.returncode == 0, r.stderr
    for cmd in ("run", "sweep", "report", "sim", "export", "bench"):
        assert cmd in r.stdout


def test_sim_asic_example_runs():
    r = _run(_line("workbook sim asic"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [rec["layer"] for rec in d["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert d["totals"]["total_cycles"] > 0 and d["totals"]["energy_pj"] > 0


def test_sim_fpga_example_runs_and_meets_its_target():
    line = _line("workbook sim fpga --topology")
    r = _run(line)
    assert r.returncode == 0, r.stderr
    layers, totals = r.stdout.split("\n\n")
    assert [row["layer"] for row in csv.DictReader(io.StringIO(layers))] == ["conv1", "conv2", "fc1", "fc2"]
    (tot,) = list(csv.DictReader(io.StringIO(totals)))
    target = float(_argv(line)[_argv(line).index("--target-fps") + 1])
    assert tot["fits"] == "True" and float(tot["fps"]) >= target


def test_example_topology_is_the_default_cnn(lenet_w8a8):
    """examples/lenet.csv describes the zoo's lenet on 28x28 inputs, layer for layer."""
    from qatlab.hw.workload import from_intmodel, read_topology

    topo = read_topology(ROOT / "examples" / "lenet.csv")
    zoo = from_intmodel(lenet_w8a8)
    assert [lay.macs for lay in topo] == [lay.macs for lay in zoo]
    # The GEMM view (output pixels, reduction length, outputs) is what both simulators cost.
    assert [(lay.M, lay.K, lay.N) for lay in topo] == [(lay.M, lay.K, lay.N) for lay in zoo]
    assert topo[2].K == FMNIST_FEATURES


@pytest.fixture()
def trial_dir(tmp_path: Path) -> Path:
    """A ptq trial's folder laid out as a run leaves it (model.pt and intmodel.pt)."""
    trial = tmp_path / "reports" / "run" / "sweep" / "trials" / "id"  # the README's <run> and <id>
    write_intmodel(write_checkpoint(trial))
    return trial


def test_trial_examples_run_on_a_trial(tmp_path, trial_dir, monkeypatch, capsys):
    # In-process (the console script is exercised above): torch's import would double the time.
    from workbook.cli import main

    monkeypatch.chdir(tmp_path)
    fpga_line, onnx_line = _line("workbook sim fpga --model"), _line("workbook export onnx")
    assert main(_concrete(fpga_line)[1:]) == 0
    (tot,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out.split("\n\n")[1])))
    assert tot["fits"] == "True" and int(tot["ops"]) > 4
    assert main(_concrete(onnx_line)[1:]) == 0
    onnx_path = tmp_path / _argv(onnx_line)[-1]
    assert onnx_path.stat().st_size > 0 and "wrote" in capsys.readouterr().out


def test_make_lab_passes_flags_and_setup_announces_its_steps():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    r = subprocess.run(
        ["make", "-n", "-B", "lab", "LAB_ARGS=--no-browser --port 8890"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    lab = [ln for ln in r.stdout.splitlines() if "jupyter lab" in ln]
    assert lab and "--no-browser --port 8890" in lab[0] and "--allow-root" in lab[0]
    announced = [ln for ln in r.stdout.splitlines() if "echo" in ln and "setup:" in ln]
    assert len(announced) >= 3  # the venv, torch, the project


# --- `workbook run -p fpga_device=PYNQ-Z1`: the hardware study on a design that does not fit ----


@pytest.fixture(scope="module")
def lenet_w8a8(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The default CNN on 28x28 inputs as a W8A8 IntModel."""
    from qatlab.intmodel import IntModel

    folder = tmp_path_factory.mktemp("lenet")
    return IntModel.load(write_intmodel(write_checkpoint(folder, input_shape=(1, 28, 28))))


@pytest.fixture(scope="module")
def too_big(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The default CNN on 56x56 inputs, W8A8: its 12544x128 FC alone holds 12.8 Mbit of
    weights, more than a PYNQ-Z1's 280 BRAM18 (5 Mbit) under FINN's estimates."""
    from qatlab.intmodel import IntModel

    folder = tmp_path_factory.mktemp("lenet56")
    return IntModel.load(write_intmodel(write_checkpoint(folder, input_shape=(1, 56, 56))))


def test_hardware_study_reports_the_overflow_instead_of_raising(too_big):
    from qatlab.hw.fpga import get_device
    from workbook.studies import hardware as hw

    fit = hw.fpga_fit(too_big, "PYNQ-Z1")
    assert fit.verdict == hw.NO_FIT and not fit.fits
    dev = get_device("PYNQ-Z1")
    assert fit.overflow, "a design that does not fit names what overflows"
    # The overflow list is exactly the resources of the reported totals above capacity.
    for res in ("lut", "dsp", "bram18", "uram"):
        over = [o for o in fit.overflow if o.resource == res]
        assert bool(over) == (fit.totals[res] > dev.capacity(res)), res
        for o in over:
            assert (o.used, o.capacity) == (fit.totals[res], dev.capacity(res)) and o.pct > 100
            assert f"{o.used - o.capacity} over" in str(o)
    assert fit.message.startswith("does not fit PYNQ-Z1 at any folding: ") and "BRAM18" in fit.message
    assert list(fit.layers.layer) == [op.name for op in too_big.ops]
    layers, totals = hw.fpga(too_big, "PYNQ-Z1")
    assert totals["fit"] == hw.NO_FIT and totals["overflow"] and not totals["fits"] and len(layers) == len(too_big.ops)


def test_hardware_study_fits_a_bigger_device(lenet_w8a8):
    from workbook.studies import hardware as hw

    fit = hw.fpga_fit(lenet_w8a8, "ZCU104")
    assert fit.verdict == hw.FITS and fit.fits and fit.overflow == [] and fit.totals["fits"] is True
    assert fit.totals["fps"] > 0 and "ZCU104" in fit.message


def _one_linear(n_in: int, n_out: int) -> object:
    from qatlab.intmodel.model import IntModel
    from tests.hw.int_nets import S8, linear, op

    ops = [op("quantize", "q", ["x"], S8, (n_in,), in_shape=(n_in,)), linear("fc", "q", n_in, n_out)]
    return IntModel(ops, "x", "fc", (n_in,), "float", {})


def test_hardware_study_says_when_a_design_fits_only_above_finn_limits():
    from qatlab.hw.fpga import FINN_RES_LIMITS, get_device
    from workbook.studies import hardware as hw

    dev = get_device("PYNQ-Z1")
    # 256 input channels of thresholds (FINN tiles per-tensor thresholds over the channels)
    # and 4 Mbit of weights: inside the device, above FINN's 70 % LUT / 80 % BRAM limits.
    fit = hw.fpga_fit(_one_linear(256, 2048), "PYNQ-Z1")
    assert fit.verdict == hw.FITS_FULL and fit.fits and fit.overflow == []
    used = {r: fit.totals[r] for r in ("lut", "dsp", "bram18", "uram")}
    assert all(used[r] <= dev.capacity(r) for r in used)
    assert any(used[r] > FINN_RES_LIMITS[r] * dev.capacity(r) for r in used)
    assert fit.message.startswith(hw.FITS_FULL)


def test_hardware_study_still_refuses_an_unknown_device(lenet_w8a8):
    from qatlab.hw.fpga import UnknownDeviceError
    from workbook.studies import hardware as hw

    with pytest.raises(UnknownDeviceError):
        hw.fpga_fit(lenet_w8a8, "PYNQ-Z9")


def test_cost_table_carries_the_overflow_not_an_error(tmp_path, too_big):
    from workbook.studies import hardware as hw

    (tmp_path / "trials" / "t1").mkdir(parents=True)
    too_big.save(tmp_path / "trials" / "t1" / "intmodel.pt")
    df = pd.DataFrame(
        [
            {
                "trial_id": "t1",
                "status": "ok",
                "method": "ptq",
                "ste": "clipped",
                "w_bits": 8,
                "a_bits": 8,
                "granularity": "channel",
                "test_acc": 0.5,
                "int_acc": 0.5,
            }
        ]
    )
    (row,) = hw.cost_table(tmp_path, df, device="PYNQ-Z1").to_dict("records")
    assert row["fpga_fits"] is False and row["fpga_fps"] is None and " over)" in row["fpga_overflow"]
    assert "fpga_error" not in row and row["asic_cycles"] > 0


def test_hardware_notebook_is_thin_and_committed_without_outputs():
    nb = json.loads((ROOT / "notebooks" / "hardware.ipynb").read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "fpga_device" in "".join(code[0]["source"]) and "parameters" in code[0]["metadata"].get("tags", [])


@pytest.mark.slow
def test_hardware_notebook_runs_on_pynq_z1(tmp_path, too_big):
    """`workbook run -p fpga_device=PYNQ-Z1`, the notebook part: it finishes and reports the overflow."""
    from qatlab.atomic import write_bytes
    from workbook.notebooks import execute
    from workbook.results import PARQUET_FILE, records_to_parquet_bytes

    sweep = tmp_path / "sweep"
    (sweep / "trials" / "t1").mkdir(parents=True)
    too_big.save(sweep / "trials" / "t1" / "intmodel.pt")
    rec = {
        "trial_id": "t1",
        "status": "ok",
        "method": "ptq",
        "ste": "clipped",
        "w_bits": 8,
        "a_bits": 8,
        "granularity": "channel",
        "test_acc": 0.5,
        "int_acc": 0.5,
        "seed": 0,
    }
    write_bytes(sweep / PARQUET_FILE, records_to_parquet_bytes([rec]))
    r = execute("hardware", tmp_path, {"run_dir": str(sweep), "fpga_device": "PYNQ-Z1"})
    assert r.status == "ok", r.error
    out = r.ipynb.read_text(encoding="utf-8")
    assert "does not fit PYNQ-Z1 at any folding" in out and "over)" in out
    cells = [c for c in json.loads(out)["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in cells)  # every section ran, ONNX included
