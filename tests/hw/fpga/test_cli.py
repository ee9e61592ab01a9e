"""`workbook sim fpga`: the contract's fields in JSON and CSV, the search options, clear errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbook.cli import main

DATA = Path(__file__).parent / "data"
LENET = str(DATA / "lenet.csv")


def _run(capsys, *argv):
    rc = main(["sim", "fpga", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_target_fps(capsys):
    rc, out, _ = _run(capsys, "--topology", LENET, "--device", "ZCU104", "--target-fps", "5000", "--format", "json")
    assert rc == 0
    d = json.loads(out)
    assert [r["layer"] for r in d["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    for r in d["layers"]:
        for k in ("layer", "pe", "simd", "cycles", "swu_cycles", "lut", "dsp", "bram18", "acc_bits"):
            assert k in r
    assert d["totals"]["fps"] >= 5000 and d["totals"]["fits"] is True and d["totals"]["latency_cycles"] > 0


def test_csv_with_folding_file(capsys, tmp_path):
    f = tmp_path / "fold.json"
    f.write_text(
        json.dumps(
            {
                "conv1": {"PE": 4, "SIMD": 3},
                "conv2": {"PE": 8, "SIMD": 32},
                "fc1": {"PE": 16, "SIMD": 64, "ram_style": "block"},
                "fc2": {"PE": 2, "SIMD": 16},
            }
        )
    )
    # FINN's default RTL sliding window (its cycle formula is checked against FINN's own in
    # test_finn_reference.py) streams conv1's window far faster than the HLS one below.
    rc, out, _ = _run(capsys, "--topology", LENET, "--device", "zcu104", "--folding", str(f))
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out.split("\n\n")[0])))
    assert (rows[0]["cycles"], rows[0]["swu_cycles"]) == ("18816", "902")
    # The HLS window and fuller memory count of --cost-model qatlab: the hand-worked figures.
    rc, out, _ = _run(capsys, "--topology", LENET, "--device", "zcu104", "--folding", str(f), "--cost-model", "qatlab")
    assert rc == 0
    layers, totals = out.split("\n\n")
    rows = list(csv.DictReader(io.StringIO(layers)))
    assert (rows[0]["cycles"], rows[0]["swu_cycles"]) == ("18816", "7146")  # see handworked_cycles.json
    assert (rows[1]["cycles"], rows[1]["swu_cycles"]) == ("14112", "1812")
    assert rows[2]["ram_style"] == "block" and rows[3]["swu_cycles"] == "0"
    (tot,) = list(csv.DictReader(io.StringIO(totals)))
    assert int(tot["ii_cycles"]) == 18816 and tot["fits"] == "True"


def test_fastest_and_save_folding(capsys, tmp_path):
    out_f = tmp_path / "chosen.json"
    rc, out, _ = _run(
        capsys,
        "--topology",
        LENET,
        "--device",
        "U250",
        "--format",
        "json",
        "--save-folding",
        str(out_f),
        "--w-bits",
        "4",
        "--a-bits",
        "4",
        "--no-schedule",
    )
    assert rc == 0
    d = json.loads(out)
    assert d["totals"]["search"] == "fastest" and d["totals"]["latency_cycles"] is None
    chosen = json.loads(out_f.read_text())
    assert chosen["conv1"]["PE"] == d["layers"][0]["pe"]
    rc, again, _ = _run(
        capsys,
        "--topology",
        LENET,
        "--device",
        "U250",
        "--format",
        "json",
        "--folding",
        str(out_f),
        "--w-bits",
        "4",
        "--a-bits",
        "4",
        "--no-schedule",
    )
    assert json.loads(again)["totals"]["fps"] == d["totals"]["fps"]


def test_design_that_does_not_fit_is_reported(capsys, tmp_path):
    f = tmp_path / "fold.json"
    f.write_text(
        json.dumps(
            {
                "conv1": {"PE": 32, "SIMD": 9},
                "conv2": {"PE": 64, "SIMD": 288},
                "fc1": {"PE": 128, "SIMD": 3136},
                "fc2": {"PE": 10, "SIMD": 128},
            }
        )
    )
    rc, out, err = _run(capsys, "--topology", LENET, "--device", "PYNQ-Z1", "--folding", str(f), "--format", "json")
    assert rc == 0 and json.loads(out)["totals"]["fits"] is False
    assert "does not fit PYNQ-Z1" in err


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--device", "ZCU104", "--target-fps", "1e9"], "cannot|needs at least"),
        (["--device", "ZCU999"], "unknown device"),
        # FINN's estimate fits the LeNet on a PYNQ-Z1; the fuller count (threshold memories) does not.
        (["--device", "PYNQ-Z1", "--cost-model", "qatlab"], "does not fit PYNQ-Z1 even at its smallest folding"),
        (["--device", "ZCU104", "--folding", "/nonexistent.json"], "cannot read folding file"),
        (["--device", "ZCU104", "--w-bits", "0"], "--w-bits"),
    ],
)
def test_errors_exit_2(capsys, argv, msg):
    rc, out, err = _run(capsys, "--topology", LENET, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("workbook: error:")
    import re

    assert re.search(msg, err)


def test_bad_folding_names_layer_and_field(capsys, tmp_path):
    f = tmp_path / "fold.json"
    f.write_text(json.dumps({"Defaults": {"PE": 1, "SIMD": 1}, "conv2": {"PE": 3, "SIMD": 1}}))
    rc, _, err = _run(capsys, "--topology", LENET, "--device", "ZCU104", "--folding", str(f))
    assert rc == 2 and "layer 'conv2': PE=3 does not divide MH=64" in err


def test_folding_and_target_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["sim", "fpga", "--topology", LENET, "--device", "ZCU104", "--folding", "f.json", "--target-fps", "10"])


def test_help_does_not_import_numpy():
    code = "import sys; from workbook.cli import build_parser; build_parser(); print('numpy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_gemm_topology(capsys, tmp_path):
    t = tmp_path / "g.csv"
    t.write_text("Layer, M, N, K,\nfc1, 4, 32, 64,\nfc2, 4, 10, 32,\n")
    f = tmp_path / "f.json"
    f.write_text(json.dumps({"fc1": {"PE": 8, "SIMD": 16}, "fc2": {"PE": 5, "SIMD": 8}}))
    rc, out, _ = _run(capsys, "--topology", str(t), "--device", "ZCU104", "--folding", str(f), "--format", "json")
    d = json.loads(out)
    # fc1: (32/8)*(64/16)*4 = 64 cycles; fc2: (10/5)*(32/8)*4 = 32; no sliding windows
    assert [(r["cycles"], r["swu_cycles"]) for r in d["layers"]] == [(64, 0), (32, 0)]
    assert d["totals"]["ii_cycles"] == 64 and d["totals"]["latency_cycles"] > 64
