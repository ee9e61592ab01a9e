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
    "layer", "total_cycles", "total_cycles_incl_prefetch", "stall_cycles", "overall_util_pct", "mapping_eff_pct",
    "compute_util_pct", "sram_ifmap_reads", "sram_filter_reads", "sram_ofmap_writes", "dram_ifmap_reads",
    "dram_filter_reads", "dram_ofmap_writes", "macs", "energy_pj", "latency_s",
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
