"""`workbook sim fpga --model`: a trained trial's IntModel, every op a row, as the library costs it."""

from __future__ import annotations

import csv
import io
import json

import pytest

from workbook.cli import main

from ..asic.test_cli import write_checkpoint, write_intmodel


def _run(capsys, *argv):
    rc = main(["sim", "fpga", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_model_checkpoint_and_intmodel_give_the_library_report(capsys, tmp_path):
    from qatlab.hw.fpga import analyze_intmodel
    from qatlab.intmodel import IntModel

    ck = write_checkpoint(tmp_path / "trial")
    im_path = write_intmodel(ck)
    im = IntModel.load(im_path)
    want = analyze_intmodel(im, "ZCU104", target_fps=20_000)
    for path in (im_path, ck):
        rc, out, _ = _run(capsys, "--model", str(path), "--device", "ZCU104", "--target-fps", "20000", "--format", "json")
        assert rc == 0, path.name
        got = json.loads(out)
        assert [r["layer"] for r in got["layers"]] == [o.name for o in im.ops]
        assert [(r["pe"], r["simd"], r["lut"], r["bram18"]) for r in got["layers"]] == [
            (r.pe, r.simd, r.lut, r.bram18) for r in want.layers
        ]
        assert got["totals"]["fps"] == pytest.approx(want.totals["fps"]) and got["totals"]["fits"] is True
        assert got["totals"]["fps"] >= 20_000


def test_model_csv_and_saved_folding_round_trip(capsys, tmp_path):
    im_path = write_intmodel(write_checkpoint(tmp_path / "trial"))
    fold = tmp_path / "fold.json"
    rc, out, _ = _run(capsys, "--model", str(im_path), "--device", "Ultra96-V2", "--save-folding", str(fold))
    assert rc == 0
    layers, totals = out.split("\n\n")
    (tot,) = list(csv.DictReader(io.StringIO(totals)))
    assert tot["search"] == "fastest" and tot["fits"] == "True"
    rc, again, _ = _run(capsys, "--model", str(im_path), "--device", "Ultra96-V2", "--folding", str(fold))
    assert rc == 0
    (tot2,) = list(csv.DictReader(io.StringIO(again.split("\n\n")[1])))
    assert float(tot2["fps"]) == pytest.approx(float(tot["fps"]))
    from qatlab.intmodel import IntModel

    assert [r["layer"] for r in csv.DictReader(io.StringIO(layers))] == [o.name for o in IntModel.load(im_path).ops]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--acc-bits", "16"], "--acc-bits applies to --topology only"),
        (["--signed-input", "--w-bits", "4"], "--w-bits, --signed-input apply to --topology only"),
    ],
)
def test_model_refuses_topology_only_options(capsys, tmp_path, extra, words):
    im_path = write_intmodel(write_checkpoint(tmp_path / "trial"))
    rc, out, err = _run(capsys, "--model", str(im_path), "--device", "ZCU104", *extra)
    assert rc == 2 and out == "" and words in err


def test_model_errors_exit_2(capsys, tmp_path):
    fp32 = write_checkpoint(tmp_path / "fp32", method="fp32")
    for path, words in ((fp32, "fp32 checkpoint has no integer model"), (tmp_path / "none.pt", "no such model file")):
        rc, out, err = _run(capsys, "--model", str(path), "--device", "ZCU104")
        assert rc == 2 and out == "" and err.startswith("workbook: error:") and words in err
    im_path = write_intmodel(write_checkpoint(tmp_path / "trial"))
    rc, _, err = _run(capsys, "--model", str(im_path), "--device", "ZCU999")
    assert rc == 2 and "unknown device" in err
