"""`workbook sim asic`: json and csv output, the record fields of docs/cli.md, user errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from workbook.cli import main

DATA = Path(__file__).parent / "data"
DESIGN_FIELDS = [
    "layer",
    "total_cycles",
    "total_cycles_incl_prefetch",
    "stall_cycles",
    "overall_util_pct",
    "mapping_eff_pct",
    "compute_util_pct",
    "sram_ifmap_reads",
    "sram_filter_reads",
    "sram_ofmap_writes",
    "dram_ifmap_reads",
    "dram_filter_reads",
    "dram_ofmap_writes",
    "macs",
    "energy_pj",
    "latency_s",
]
ARGS = ["sim", "asic", "--config", str(DATA / "configs" / "scale.cfg"), "--topology", str(DATA / "topologies" / "test.csv")]


def test_json_output(capsys):
    assert main(ARGS) == 0
    d = json.loads(capsys.readouterr().out)
    (rec,) = d["layers"]
    assert list(rec)[: len(DESIGN_FIELDS)] == DESIGN_FIELDS
    # SCALE-Sim 3.0.0 on the same files: 21479 cycles, 25053 with prefetch, 10368 ofmap writes.
    assert (rec["total_cycles"], rec["total_cycles_incl_prefetch"], rec["sram_ofmap_writes"]) == (21479, 25053, 10368)
    assert rec["sram_ofmap_writes_corrected"] == 9600
    assert d["totals"]["macs"] == rec["macs"] == 25 * 384 * 1728


def test_csv_output_and_options(capsys, tmp_path):
    out = tmp_path / "r.csv"
    assert main([*ARGS, "--format", "csv", "--dataflow", "ws", "--freq-mhz", "500", "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["layer"] for r in rows] == ["Inc5b_3x3", "TOTAL"]
    assert float(rows[0]["latency_s"]) == pytest.approx(int(rows[0]["cycles"]) / 500e6)
    assert not list(tmp_path.glob(".sim_asic.*"))  # the temporary file was renamed into place
    assert main([*ARGS, "--format", "csv", "--w-bits", "4", "--a-bits", "4", "--pack", "0"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["pack"] == "2"


@pytest.mark.parametrize(
    "swap, words",
    [
        (("--config", "nope.cfg"), ["nope.cfg", "cannot read"]),
        (("--topology", "nope.csv"), ["nope.csv", "cannot read"]),
    ],
)
def test_user_errors_exit_2(capsys, swap, words):
    args = list(ARGS)
    args[args.index(swap[0]) + 1] = swap[1]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbook: error:")
    for w in words:
        assert w in err


@pytest.mark.parametrize(
    "row, words",
    [
        ("c, 8, 8, 3, 3, 0, 4, 1,", ["Channels", "positive"]),
        ("c, 8, -8, 3, 3, 2, 4, 1,", ["IFMAP Width", "positive"]),
        ("c, 4, 4, 5, 5, 2, 4, 1,", ["filter 5x5", "larger"]),
    ],
)
def test_bad_topology_row_names_file_line_field(capsys, tmp_path, row, words):
    t = tmp_path / "bad.csv"
    t.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n" + row + "\n")
    args = list(ARGS)
    args[args.index("--topology") + 1] = str(t)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{t}:2" in err
    for w in words:
        assert w in err


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit):
        main(["sim", "asic", "--help"])
    out = capsys.readouterr().out
    for opt in ("--config", "--topology", "--format", "--pack", "--sparsity", "--freq-mhz", "--node-nm"):
        assert opt in out


def write_checkpoint(folder: Path, method: str = "ptq", bits: int = 8, input_shape: tuple[int, int, int] = (1, 8, 8)) -> Path:
    """A real trial checkpoint (``model.pt``) of the zoo's LeNet for ``method``, calibrated on
    random inputs: the file format and the conversion are the trial's, without the training."""
    import torch

    from qatlab.config import profile
    from qatlab.nn import calibrate, prepare_qat
    from qatlab.train import build_for, save_checkpoint, specs

    over = {} if method == "fp32" else {"w_bits": bits, "a_bits": bits}
    cfg = profile("tiny", method=method, **over)
    torch.manual_seed(0)
    model = build_for(cfg, 10, input_shape).eval()
    if method != "fp32":
        w_spec, a_spec = specs(cfg)
        model = prepare_qat(model, w_spec, a_spec, cfg.ste, first_last_bits=cfg.first_last_bits)
        calibrate(model, [torch.rand(16, *input_shape) for _ in range(2)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    save_checkpoint(model, cfg, path, 10, input_shape)
    return path


def write_intmodel(checkpoint: Path) -> Path:
    """The trial's ``intmodel.pt`` beside ``checkpoint``, converted as the trial converts it."""
    from qatlab.intmodel import convert
    from qatlab.train import load_checkpoint

    model, cfg, shape = load_checkpoint(checkpoint)
    path = checkpoint.with_name("intmodel.pt")
    convert(model, shape, cfg.rounding).save(path)
    return path


MODEL_ARGS = ["sim", "asic", "--config", str(DATA / "configs" / "scale.cfg")]


def test_model_checkpoint_and_intmodel_give_the_library_records(capsys, tmp_path):
    from qatlab.hw.asic import ArrayConfig, simulate_intmodel
    from qatlab.intmodel import IntModel

    ck = write_checkpoint(tmp_path / "trial", bits=4)
    im_path = write_intmodel(ck)
    want = json.loads(simulate_intmodel(IntModel.load(im_path), ArrayConfig.from_cfg(DATA / "configs" / "scale.cfg")).to_json())
    for path in (im_path, ck):
        assert main([*MODEL_ARGS, "--model", str(path)]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got == want, path.name
    assert [r["op_kind"] for r in want["layers"]][:2] == ["quantize", "conv"]
    assert want["totals"]["macs"] > 0


def test_model_csv_has_one_row_per_op_and_a_total(capsys, tmp_path):
    from qatlab.intmodel import IntModel

    im_path = write_intmodel(write_checkpoint(tmp_path / "trial"))
    assert main([*MODEL_ARGS, "--model", str(im_path), "--format", "csv", "--pack", "0"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["layer"] for r in rows] == [o.name for o in IntModel.load(im_path).ops] + ["TOTAL"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--w-bits", "4"], ["--w-bits applies to --topology only"]),
        (["--w-bits", "4", "--a-bits", "4"], ["--w-bits, --a-bits apply to --topology only"]),
    ],
)
def test_model_refuses_topology_only_options(capsys, tmp_path, extra, words):
    im_path = write_intmodel(write_checkpoint(tmp_path / "trial"))
    assert main([*MODEL_ARGS, "--model", str(im_path), *extra]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_model_file_errors_exit_2(capsys, tmp_path):
    fp32 = write_checkpoint(tmp_path / "fp32", method="fp32")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    cases = [
        (fp32, "fp32 checkpoint has no integer model"),
        (tmp_path / "missing.pt", "no such model file"),
        (tmp_path, "is a folder"),
        (junk, "cannot read checkpoint"),
    ]
    for path, words in cases:
        assert main([*MODEL_ARGS, "--model", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert err.startswith("workbook: error:") and words in err and str(path) in err


def test_topology_and_model_are_exclusive_and_one_is_required(capsys):
    with pytest.raises(SystemExit) as both:
        main([*ARGS, "--model", "m.pt"])
    with pytest.raises(SystemExit) as neither:
        main(MODEL_ARGS)
    assert both.value.code == neither.value.code == 2
    assert "one of the arguments --topology --model is required" in capsys.readouterr().err
