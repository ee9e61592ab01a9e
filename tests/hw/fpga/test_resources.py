"""Resource estimates equal the cited FINN formulas on hand-worked cases
(data/handworked_resources.json shows the arithmetic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qatlab.hw.fpga import resources as R
from qatlab.hw.fpga.resources import Resources

D = json.loads((Path(__file__).parent / "data" / "handworked_resources.json").read_text())


@pytest.mark.parametrize("case", D["mvau_hls_luts"])
def test_mvau_luts(case):
    assert R.mvau_hls_luts(**case["args"]) == case["expect"]


@pytest.mark.parametrize("case", D["a2q_acc_bits"])
def test_a2q_bound(case):
    assert R.a2q_acc_bits(**case["args"]) == case["expect"]


@pytest.mark.parametrize("case", D["bram18_sdp"])
def test_bram18(case):
    assert R.bram18_sdp(case["depth"], case["width"]) == case["expect"]


@pytest.mark.parametrize("case", D["weights"])
def test_weight_memory_styles(case):
    depth = case["mh"] * case["mw"] // (case["pe"] * case["simd"])
    width = case["pe"] * case["simd"] * case["w_bits"]
    for style in ("auto", "block", "ultra"):
        got = R.memory_resources(R.resolve_ram_style(style, depth), depth, width)
        assert (got.lut, got.bram18, got.uram) == tuple(case[style][k] for k in ("lut", "bram18", "uram")), style


@pytest.mark.parametrize("case", D["dsp"])
def test_dsp(case):
    if case["fn"] == "rtl":
        assert R.mvau_rtl_dsps(case["pe"], case["simd"], case["block"]) == case["expect"]
    else:
        assert R.mvau_hls_dsps(case["pe"], case["simd"], case["w_bits"], case["a_bits"]) == case["expect"]


@pytest.mark.parametrize("case", D["swu_bram18"])
def test_swu_bram(case):
    assert R.swu_bram18(**case["args"]) == case["expect"]


@pytest.mark.parametrize("case", D["fifo"])
def test_fifo(case):
    got = R.fifo_resources(case["depth"], case["width"])
    assert (got.lut, got.bram18) == (case["expect"]["lut"], case["expect"]["bram18"])


@pytest.mark.parametrize("case", D["thresholding"])
def test_thresholding(case):
    assert R.thresholding_resources(**case["args"]) == Resources(**case["expect"])


@pytest.mark.parametrize(
    "kw, impl",
    [
        (dict(w_bits=8, a_bits=8), "rtl"),  # FINN packs >= 4-bit operands into DSPs
        (dict(w_bits=4, a_bits=4), "rtl"),
        (dict(w_bits=3, a_bits=8), "hls-lut"),  # below 4 bits: LUT multipliers
        (dict(w_bits=8, a_bits=2), "hls-lut"),
        (dict(w_bits=8, a_bits=9, a_signed=True), "rtl"),
        (dict(w_bits=8, a_bits=9), "hls-lut"),
        (dict(w_bits=12, a_bits=8), "hls-lut"),
        (dict(w_bits=8, a_bits=8, w_signed=False), "hls-lut"),
        (dict(w_bits=8, a_bits=8, dsp_block="DSP48E1"), "hls-lut"),  # 7-series: narrow weights only
        (dict(w_bits=8, a_bits=8, dsp_block="DSP48E1", narrow_weights=True), "rtl"),
        (dict(w_bits=8, a_bits=8, res_type="lut"), "hls-lut"),
        (dict(w_bits=3, a_bits=3, res_type="dsp"), "hls-dsp"),
        (dict(w_bits=8, a_bits=8, res_type="dsp"), "rtl"),
    ],
)
def test_impl_choice_as_finn(kw, impl):
    res_type = kw.pop("res_type", "auto")
    assert R.mvau_impl(kw.pop("w_bits"), kw.pop("a_bits"), res_type, **kw) == impl


def test_mvau_cost_composes_the_parts():
    c = R.mvau_cost(64, 288, 8, 32, 8, 8, 25, 8, dsp_block="DSP48E2")
    assert c.impl == "rtl" and c.compute == Resources(dsp=64)  # FINN counts no LUTs for the RTL core
    assert c.weights == Resources(lut=4096)  # LUTRAM: see the "weights" case
    assert c.activation == R.thresholding_resources(8, 64, 8, 25)
    assert c.total == c.compute + c.weights + c.activation
    lut = R.mvau_cost(64, 288, 8, 32, 3, 3, 14, 3, dsp_block="DSP48E2")
    assert lut.impl == "hls-lut" and lut.compute.dsp == 0
    # the LUT model's accumulator is min(acc width, A2Q bound)
    assert lut.compute.lut == R.mvau_hls_luts(8, 32, 3, 3, min(14, R.a2q_acc_bits(288, 3, 3, False)), True)
