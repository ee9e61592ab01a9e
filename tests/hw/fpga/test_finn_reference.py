"""qatlab's default cost model equals FINN's own cost functions, case by case.

``data/finn_reference.json`` holds FINN's values (finn-plus 1.6.1, real FINN nodes,
default build settings), written by ``data/make_finn_reference.py``; FINN is not
needed here. Every metric of every case must be equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qatlab.hw.fpga import FoldingError, FpgaError, IntLayer, LayerFolding, analyze, parse_folding
from qatlab.hw.fpga.accumulator import accumulator_bits
from qatlab.hw.fpga.cycles import swu_rtl_cycles
from qatlab.hw.fpga.model import SWU_RTL_RAM_STYLE, layer_specs
from qatlab.hw.fpga.resources import (
    Resources,
    channelwise_op_luts,
    finn_thresholding_resources,
    swu_rtl_resources,
    vvau_bram18,
    vvau_luts,
)
from qatlab.hw.fpga.units import globalaccpool_cycles, pool_cycles, stream_cycles, vvau_cycles
from qatlab.hw.workload import Layer

DATA = json.loads((Path(__file__).parent / "data" / "finn_reference.json").read_text())


def pattern_weights(mh: int, mw: int, bits: int, signed: bool, pattern: int, narrow: bool) -> np.ndarray:
    """The generator's weight pattern, [MW, MH] (must stay identical to ``weights`` in
    make_finn_reference.py)."""
    lo = -(1 << (bits - 1)) if signed else 0
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if narrow and signed:
        lo += 1
    span = hi - lo + 1
    i = np.arange(mh)[None, :]
    j = np.arange(mw)[:, None]
    return (lo + (7 * i + 13 * j + pattern) % span).astype(np.int64)


def _ids(kind: str) -> list[str]:
    return [f"{kind}{k}" for k in range(len(DATA[kind]))]


@pytest.mark.parametrize("entry", DATA["mvau"], ids=_ids("mvau"))
def test_mvau_equals_finn(entry):
    c, want = entry["case"], entry["finn"]
    w = pattern_weights(c["mh"], c["mw"], c["w_bits"], True, c["pattern"], c["narrow"]).T
    act = c["out_bits"] is not None
    p = IntLayer(
        w,
        multiplier=np.ones(c["mh"]) if act else None,
        qmin=0,
        qmax=(1 << c["out_bits"]) - 1 if act else 255,
        in_signed=c["a_signed"],
    )
    lay = Layer.gemm("l", c["vectors"], c["mh"], c["mw"], w_bits=c["w_bits"], a_bits=c["a_bits"])
    fold = LayerFolding(c["pe"], c["simd"], ram_style=c["ram_style"])
    rep = analyze([lay], c["device"], folding={"l": fold}, params=[p], output_last=c["last"], schedule=False)
    (r,) = rep.layers
    got = {"cycles": r.cycles, "lut": r.lut, "bram18": r.bram18, "uram": r.uram, "dsp": r.dsp, "acc_bits": r.acc_bits}
    assert got == {k: want[k] for k in got}
    assert r.impl.split("-")[0] == want["impl"]


@pytest.mark.parametrize("entry", DATA["swu"], ids=_ids("swu"))
def test_rtl_sliding_window_equals_finn(entry):
    c, want = entry["case"], entry["finn"]
    (ih, iw), (kh, kw), (sh, sw) = c["ifm"], c["kernel"], c["stride"]
    oh, ow = (ih - kh) // sh + 1, (iw - kw) // sw + 1
    style = c.get("ram_style") or SWU_RTL_RAM_STYLE
    assert want["default_ram_style"] == style
    cyc = swu_rtl_cycles(ih, iw, c["channels"], kh, kw, sh, sw, oh, ow, c["simd"], c["parallel_window"], c.get("depthwise", False))
    res = swu_rtl_resources(ih, iw, c["channels"], kh, kw, sh, sw, c["simd"], c["a_bits"], c["parallel_window"], style)
    assert {"cycles": cyc, **res.as_dict()} == {k: want[k] for k in ("cycles", "lut", "dsp", "bram18", "uram")}


@pytest.mark.parametrize("entry", [e for e in DATA["swu"] if not e["case"].get("depthwise") and not e["case"].get("ram_style")])
def test_a_conv_layers_window_is_finns_rtl_window(entry):
    """The same numbers reach a layer: its window's cycles and cost in the default model."""
    c, want = entry["case"], entry["finn"]
    (ih, iw), (kh, kw), (sh, sw) = c["ifm"], c["kernel"], c["stride"]
    lay = Layer("c", ih, iw, kh, kw, c["channels"], 8, sh, sw, a_bits=c["a_bits"])
    (spec,) = layer_specs([lay])
    fold = LayerFolding(1, 1, c["simd"], parallel_window=c["parallel_window"])
    res = spec.window_cost(c["simd"], c["parallel_window"])
    window = max(spec.cycles(fold)[1:])  # a 1x1 stride-2 layer's unit is the DownSampler slot
    assert (window, res.lut, res.bram18, res.uram) == (want["cycles"], want["lut"], want["bram18"], want["uram"])


@pytest.mark.parametrize("entry", DATA["thresholding"], ids=_ids("thresholding"))
def test_thresholding_equals_finn(entry):
    c, want = entry["case"], entry["finn"]
    res = finn_thresholding_resources(c["pe"], c["channels"], c["out_bits"], c["thr_bits"])
    cyc = stream_cycles(c["pixels"], c["channels"], c["pe"])
    assert {"cycles": cyc, **res.as_dict()} == {k: want[k] for k in ("cycles", "lut", "dsp", "bram18", "uram")}


@pytest.mark.parametrize("entry", DATA["vvau"], ids=_ids("vvau"))
def test_vvau_equals_finn(entry):
    c, want = entry["case"], entry["finn"]
    ch, (kh, kw), (oh, ow) = c["channels"], c["kernel"], c["dim"]
    pe, simd, taps = c["pe"], c["simd"], kh * kw
    # FINN's [C, 1, k_h, k_w] tensor as the generator lays it out, one row per channel.
    w = pattern_weights(taps, ch, c["w_bits"], True, c["pattern"], False).T.reshape(ch, taps)
    acc = accumulator_bits(taps, c["w_bits"], c["a_bits"], weights=w, a_signed=c["a_signed"]).used
    depth, width = taps * ch // (pe * simd), pe * simd * c["w_bits"]
    got = {
        "cycles": vvau_cycles(ch, kh, kw, oh * ow, pe, simd),
        "lut": vvau_luts(pe, simd, c["w_bits"], c["a_bits"], acc, taps, c["a_signed"], c["out_bits"], ch),
        "bram18": vvau_bram18(depth, width),
        "uram": 0,
        "dsp": 0,
        "acc_bits": acc,
    }
    assert got == {k: want[k] for k in got}


def _unit(c: dict) -> tuple[int, Resources]:
    """qatlab's cycles and FINN-model resources of one streaming unit."""
    k = c["kind"]
    pix = int(np.prod(c.get("vectors", (1,))))
    if k == "pool":
        (kh, kw), (oh, ow) = c["kernel"], c["out"]
        return pool_cycles(c["channels"] * kh * kw * oh * ow, c["pe"]), Resources()
    if k == "concat":
        return stream_cycles(pix, sum(c["channels"]), c["simd"]), Resources()
    if k == "globalaccpool":
        return globalaccpool_cycles(pix * c["channels"], c["channels"], c["pe"]), Resources()
    if k == "channelwise":
        return stream_cycles(pix, c["channels"], c["pe"]), Resources(lut=channelwise_op_luts(c["pe"], c["channels"], c["bits"]))
    if k == "addstreams":
        return stream_cycles(pix, c["channels"], c["pe"]), Resources()
    raise AssertionError(k)


@pytest.mark.parametrize("entry", DATA["units"], ids=_ids("units"))
def test_streaming_units_equal_finn(entry):
    c, want = entry["case"], entry["finn"]
    cyc, res = _unit(c)
    assert {"cycles": cyc, **res.as_dict()} == {k: want[k] for k in ("cycles", "lut", "dsp", "bram18", "uram")}


def test_reference_covers_what_it_claims():
    """The data is FINN's and spans both MVAU variants, both window styles, deep lines."""
    assert DATA["finn"].startswith("finn-plus")
    assert {e["finn"]["impl"] for e in DATA["mvau"]} == {"hls", "rtl"}
    assert {e["case"]["parallel_window"] for e in DATA["swu"]} == {True, False}
    assert any(e["finn"]["bram18"] > 0 for e in DATA["swu"])
    assert any(e["case"]["last"] and e["finn"]["acc_bits"] % 8 == 0 for e in DATA["mvau"])
    assert {e["case"]["kind"] for e in DATA["units"]} == {"pool", "concat", "globalaccpool", "channelwise", "addstreams"}


def test_bad_cost_model_and_parallel_window_are_typed_errors():
    lay = Layer("c", 10, 10, 3, 3, 4, 8)
    with pytest.raises(FpgaError, match="cost_model must be one of finn, qatlab, got 'vivado'"):
        analyze([lay], "ZCU104", folding={"*": LayerFolding()}, cost_model="vivado")
    with pytest.raises(FoldingError, match="parallel_window needs SWU_SIMD equal to the input channels"):
        analyze([lay], "ZCU104", folding={"c": LayerFolding(1, 4, 2, parallel_window=True)})
    with pytest.raises(FoldingError, match="'parallel_window' must be 0 or 1"):
        parse_folding({"c": {"PE": 1, "SIMD": 1, "parallel_window": 2}})
    assert parse_folding({"c": {"PE": 1, "SIMD": 1, "parallel_window": 1}})["c"].parallel_window is True


def test_parallel_window_follows_the_mvaus_appetite():
    """Automatic: on exactly when the MVAU takes more than the channels per cycle."""
    lay = Layer("c", 10, 10, 3, 3, 4, 8)
    wide = analyze([lay], "ZCU104", folding={"c": LayerFolding(1, 12)}, schedule=False)
    narrow = analyze([lay], "ZCU104", folding={"c": LayerFolding(1, 4)}, schedule=False)
    assert wide.folding["c"].parallel_window and wide.layers[0].swu_cycles == 10 * 10 + 2
    assert not narrow.folding["c"].parallel_window and narrow.layers[0].swu_cycles == (2 * 10 + 3) + 8 * max(8 * 9, 10)
