"""The report: contract fields, JSON/CSV forms, latency and FIFO depths, accumulators."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from qatlab.hw.fpga import FpgaError, IntLayer, LayerFolding, ParamsError, analyze, read_folding, write_folding
from qatlab.hw.workload import Layer

CONTRACT = ["layer", "pe", "simd", "cycles", "swu_cycles", "lut", "dsp", "bram18", "acc_bits"]


def _net():
    return [Layer("c1", 10, 10, 3, 3, 3, 8), Layer("c2", 8, 8, 3, 3, 8, 16, 2, 2), Layer("fc", 1, 1, 1, 1, 144, 10)]


def test_contract_fields_and_json():
    rep = analyze(_net(), "ZCU104", folding={"*": LayerFolding(2, 3)} | {"fc": LayerFolding(5, 16)})
    d = rep.to_dict()
    assert list(d) == ["layers", "totals"]
    assert [r["layer"] for r in d["layers"]] == ["c1", "c2", "fc"]
    for r in d["layers"]:
        assert list(r)[: len(CONTRACT)] == CONTRACT
    for k in ("fps", "latency_cycles", "fits"):
        assert k in d["totals"]
    json.loads(json.dumps(d))  # plain JSON
    assert d["layers"][2]["swu_cycles"] == 0  # fully connected: no sliding window
    assert d["totals"]["latency_cycles"] <= d["totals"]["latency_cycles_sum"] + 10


def test_csv_has_layers_then_totals():
    rep = analyze(_net(), "ZCU104", folding={"*": LayerFolding()})
    layers_part, totals_part = rep.to_csv().split("\n\n")
    rows = list(csv.DictReader(io.StringIO(layers_part)))
    assert [r["layer"] for r in rows] == ["c1", "c2", "fc"]
    (tot,) = list(csv.DictReader(io.StringIO(totals_part)))
    assert tot["fits"] == "True" and float(tot["fps"]) > 0


def test_fifo_depths_and_line_buffer():
    rep = analyze(_net(), "ZCU104", folding={"c1": LayerFolding(8, 27), "c2": LayerFolding(1, 1), "fc": LayerFolding(1, 1)})
    c1, c2, fc = rep.layers
    assert c1.in_fifo_depth is not None and c1.mid_fifo_depth is not None and fc.mid_fifo_depth is None
    assert c1.line_buffer_bits == (3 + 1) * 10 * 3 * 8  # k + stride rows of 10 pixels x 3 channels x 8 bits
    assert c2.line_buffer_bits == (3 + 2) * 8 * 8 * 8
    assert rep.totals["fifo_depths_converged"] is True
    # c1 runs far faster than c2 (the bottleneck): its output queues up in front of c2
    assert c2.in_fifo_depth >= c2.swu_simd


def test_accumulator_from_weights_and_override():
    lay = [Layer("fc", 1, 1, 1, 1, 4, 2)]
    w = np.array([[1, 2, 3, 4], [0, 0, 0, -1]])
    rep = analyze(lay, "ZCU104", folding={"*": LayerFolding()}, params=[w], schedule=False)
    r = rep.layers[0]
    # 8-bit unsigned inputs: ch0 in [0, 10*255 = 2550], ch1 in [-255, 0] -> [-255, 2550]: 13 bits signed
    # FINN rounds the output layer's accumulator (no activation) up to whole bytes
    assert (r.acc_bits_tight, r.acc_bits) == (13, 16)
    q = analyze(lay, "ZCU104", folding={"*": LayerFolding()}, params=[w], schedule=False, cost_model="qatlab").layers[0]
    assert q.acc_bits == 13
    mid = analyze(lay, "ZCU104", folding={"*": LayerFolding()}, params=[w], schedule=False, output_last=False).layers[0]
    assert mid.acc_bits == 13
    assert r.acc_bits_worst == 18  # 4 * [-128*255, 127*255] = [-130560, 129540] -> 18 bits
    r2 = analyze(lay, "ZCU104", folding={"*": LayerFolding()}, params=[w], acc_bits=12, schedule=False).layers[0]
    assert r2.acc_bits == 12 and r2.acc_overflow_possible
    with pytest.raises(ParamsError, match="field 'weights' has shape"):
        analyze(lay, "ZCU104", folding={"*": LayerFolding()}, params=[w.T])


def test_folding_json_round_trip(tmp_path):
    rep = analyze(_net(), "ZCU104", target_fps=20_000, schedule=False)
    p = tmp_path / "f.json"
    write_folding(rep.folding, p)
    back = read_folding(p)
    again = analyze(_net(), "ZCU104", folding=back, schedule=False)
    assert [(r.pe, r.simd, r.swu_simd, r.lut, r.bram18) for r in again.layers] == [
        (r.pe, r.simd, r.swu_simd, r.lut, r.bram18) for r in rep.layers
    ]
    assert json.loads(p.read_text())["c1"]["PE"] == rep.layers[0].pe


def test_argument_errors():
    with pytest.raises(FpgaError, match="not both"):
        analyze(_net(), "ZCU104", folding={"*": LayerFolding()}, target_fps=10)
    with pytest.raises(FpgaError, match="clock"):
        analyze(_net(), "ZCU104", folding={"*": LayerFolding()}, clock_mhz=0)
    with pytest.raises(FpgaError, match="unique"):
        analyze([Layer("a", 4, 4, 1, 1, 2, 2), Layer("a", 4, 4, 1, 1, 2, 2)], "ZCU104", folding={"*": LayerFolding()})
    with pytest.raises(ValueError, match="unknown device"):
        analyze(_net(), "nope")


def test_int_layer_params_drive_the_activation_cost():
    lay = [Layer("fc", 1, 1, 1, 1, 8, 4, w_bits=4, a_bits=4)]
    w = np.ones((4, 8), dtype=np.int64)
    two = analyze(lay, "ZCU104", folding={"*": LayerFolding()}, params=[IntLayer(w, None, np.ones(4), 0, 0, 3)], schedule=False)
    raw = analyze(lay, "ZCU104", folding={"*": LayerFolding()}, params=[IntLayer(w)], schedule=False)
    assert two.layers[0].out_bits == 2 and raw.layers[0].out_bits is None
    assert two.layers[0].lut > raw.layers[0].lut  # thresholds cost LUTs
