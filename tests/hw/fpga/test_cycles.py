"""FINN's cycle formulas on hand-worked cases (data/handworked_cycles.json shows the arithmetic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qatlab.hw.fpga import FoldingError, LayerFolding, analyze, geometry
from qatlab.hw.fpga.cycles import layer_cycles
from qatlab.hw.fpga.folding import check_layer_folding, parse_folding
from qatlab.hw.workload import Layer

CASES = json.loads((Path(__file__).parent / "data" / "handworked_cycles.json").read_text())["cases"]


def _layer(case: dict) -> Layer:
    if "gemm" in case:
        name, m, n, k = case["gemm"]
        return Layer.gemm(name, m, n, k)
    name, ih, iw, fh, fw, ch, nf, st = case["layer"]
    return Layer(name, ih, iw, fh, fw, ch, nf, st, st)


@pytest.mark.parametrize("case", CASES, ids=[c["what"][:40] for c in CASES])
def test_handworked_cycles(case):
    lay = _layer(case)
    g = geometry(lay)
    assert (g.mh, g.mw, g.pixels) == (case["mh"], case["mw"], case["pixels"])
    f = check_layer_folding(g, parse_folding({lay.name: case["fold"]})[lay.name])
    assert f.swu_simd == case["swu_simd"]
    mv, sw, ds = layer_cycles(g, f.pe, f.simd, f.swu_simd or 1)
    assert (mv, sw, ds) == (case["cycles"], case["swu_cycles"], case["ds_cycles"])


@pytest.mark.parametrize("case", CASES, ids=[c["what"][:40] for c in CASES])
def test_report_carries_the_same_cycles(case):
    lay = _layer(case)
    rep = analyze(
        [lay],
        "U250",
        folding={lay.name: LayerFolding(case["fold"]["PE"], case["fold"]["SIMD"], case["fold"].get("SWU_SIMD"))},
        schedule=False,
        cost_model="qatlab",  # the hand-worked cases are the HLS sliding window's
    )
    (r,) = rep.layers
    assert (r.cycles, r.swu_cycles, r.ds_cycles) == (case["cycles"], case["swu_cycles"], case["ds_cycles"])
    assert r.ii_cycles == max(case["cycles"], case["swu_cycles"], case["ds_cycles"])
    assert rep.totals["fps"] == pytest.approx(rep.clock_mhz * 1e6 / r.ii_cycles)


def test_batch_multiplies_every_unit():
    one = geometry(Layer("c", 8, 8, 3, 3, 2, 4))
    four = geometry(Layer("c", 8, 8, 3, 3, 2, 4, batch=4))
    assert [4 * c for c in layer_cycles(one, 2, 3, 2)] == list(layer_cycles(four, 2, 3, 2))


@pytest.mark.parametrize(
    "fold, field",
    [
        ({"PE": 5, "SIMD": 1}, "PE=5 does not divide MH=32"),
        ({"PE": 1, "SIMD": 4}, "SIMD=4 does not divide MW=9"),
        ({"PE": 1, "SIMD": 3, "SWU_SIMD": 2}, "SWU_SIMD=2 does not divide the input channels (1)"),
        ({"PE": 0, "SIMD": 1}, "field 'PE' must be a positive integer"),
        ({"PE": 1, "SIMD": True}, "field 'SIMD' must be a positive integer"),
        ({"PE": 1, "SIMD": 1, "Pe": 2}, "unknown field 'Pe'"),
        ({"PE": 1, "SIMD": 1, "ram_style": "fast"}, "ram_style"),
    ],
)
def test_infeasible_folding_names_layer_and_field(fold, field):
    lay = Layer("conv1", 30, 30, 3, 3, 1, 32)
    with pytest.raises(FoldingError, match="conv1") as e:
        analyze([lay], "ZCU104", folding=parse_folding({"conv1": fold}))
    assert field in str(e.value)
    assert isinstance(e.value, ValueError)


def test_folding_must_cover_every_layer_and_no_more():
    a, b = Layer("a", 6, 6, 3, 3, 2, 4), Layer("b", 4, 4, 3, 3, 4, 4)
    with pytest.raises(FoldingError, match="layer 'b': no entry"):
        analyze([a, b], "ZCU104", folding={"a": LayerFolding()})
    with pytest.raises(FoldingError, match="not in the topology: 'c'"):
        analyze([a, b], "ZCU104", folding={"a": LayerFolding(), "b": LayerFolding(), "c": LayerFolding()})
    rep = analyze([a, b], "ZCU104", folding=parse_folding({"Defaults": {"PE": [2, ["MVAU_hls"]], "SIMD": 2}}))
    assert [(r.pe, r.simd) for r in rep.layers] == [(2, 2), (2, 2)]
