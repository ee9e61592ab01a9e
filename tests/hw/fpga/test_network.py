"""Every IntModel op on the FPGA: MVAUs as before, FINN's streaming units for the rest
(VVAU, Thresholding, Lookup, ElementwiseAdd, StreamingConcat, Pool, GlobalAccPool)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from qatlab.hw.fpga import FoldingError, LayerFolding, analyze, analyze_intmodel, get_device, network
from qatlab.hw.fpga.convert import params_from_intmodel
from qatlab.hw.fpga.cycles import swu_cycles, swu_rtl_cycles
from qatlab.hw.fpga.folding import default_swu_simd
from qatlab.hw.fpga.resources import (
    Resources,
    memory_resources,
    mvau_hls_luts,
    swu_bram18,
    swu_luts,
    swu_rtl_resources,
    thresholding_resources,
    vvau_bram18,
    vvau_luts,
)
from qatlab.hw.fpga.units import _price, choose, unit_spec
from qatlab.hw.opgraph import UnsupportedOpError, op_infos
from qatlab.hw.workload import from_intmodel
from qatlab.intmodel.model import IntModel

from ..int_nets import U8, ActQ, conv, depthwise_only, every_kind, op


def test_every_op_is_a_row_and_the_totals_sum_them():
    m = every_kind()
    rep = analyze_intmodel(m, "ZCU104")
    assert [r.layer for r in rep.layers] == [o.name for o in m.ops]
    t = rep.totals
    for k in ("lut", "dsp", "bram18", "uram"):
        extra = {"lut": "fifo_lut", "bram18": "fifo_bram18"}.get(k)
        assert t[k] == sum(getattr(r, k) + (getattr(r, extra) if extra else 0) for r in rep.layers), k
    ii = max(r.ii_cycles for r in rep.layers)
    assert t["ii_cycles"] == ii and t["fps"] == pytest.approx(rep.clock_mhz * 1e6 / ii)
    assert sum(r.bottleneck for r in rep.layers) == 1
    assert t["latency_cycles_sum"] == sum(r.cycles + r.swu_cycles + r.ds_cycles + r.pad_cycles for r in rep.layers)
    assert 0 < t["latency_cycles"] < t["latency_cycles_sum"]  # the graph's timing overlaps its units
    assert t["ops"] == len(m.ops) and t["macs_per_frame"] == 8 * 100 * 27 + 8 * 100 * 9 + 8 * 100 * 4 + 1080
    unit = {r.layer: r.unit for r in rep.layers}
    # FINN's default: the padding first, the thresholds inside the VVAU
    assert unit["dw"] == "FMPadding+ConvolutionInputGenerator+VVAU"
    rows = {r.layer: r for r in rep.layers}
    assert rows["c1"].unit == "swu" and rows["c1"].pad_cycles == 12 * 12 * 3 // rows["c1"].swu_simd  # 10x10 padded by 1
    assert rows["dw"].pad_cycles == 12 * 12 * 8 // rows["dw"].swu_simd and rows["gc"].pad_cycles == 0
    assert unit["act"] == "Thresholding" and unit["act2"] == "Lookup"  # monotone table vs not
    # finn-plus' add: both inputs on one scale (U8B), so the integer codes are summed
    assert unit["res"] == "ElementwiseAdd+Thresholding" and unit["gate"] == "ElementwiseMul+Thresholding"
    assert unit["cat"] == "StreamingConcat+Thresholding"  # one input requantized
    assert unit["mp"] == "ConvolutionInputGenerator+Pool" and unit["se"] == "GlobalAccPool+Thresholding"
    assert {unit[n] for n in ("sl", "pm", "rs", "fl")} == {"passthrough"}
    assert all(r.lut == r.bram18 == r.ii_cycles == 0 for r in rep.layers if r.unit == "passthrough")
    assert set(rep.folding) == {o.name for o in m.ops if o.kind not in ("slice", "permute", "reshape", "flatten")}
    d = json.loads(json.dumps(rep.to_dict()))
    assert [r["layer"] for r in d["layers"]] == [o.name for o in m.ops]
    assert len(rep.to_csv().splitlines()) == len(m.ops) + 4  # header, rows, blank, totals header and row


@pytest.mark.parametrize("cost_model", ["finn", "qatlab"])
def test_units_meet_the_mvau_budget_when_they_can(cost_model):
    m = every_kind()
    rep = analyze_intmodel(m, "ZCU104", cost_model=cost_model)
    mvau_ii = max(r.ii_cycles for r in rep.layers if r.layer in ("c1", "gc", "fc"))
    specs = {i.name: unit_spec(i, cost_model) for i in op_infos(m) if i.name not in ("c1", "gc", "fc")}
    for r in rep.layers:
        if r.layer in specs:
            fastest = min(specs[r.layer].cost(p, s).ii for p, s in specs[r.layer].options())
            assert r.ii_cycles <= max(mvau_ii, fastest)
            if fastest > mvau_ii:  # it cannot keep up: then it runs at its fastest
                assert r.ii_cycles == fastest


def test_vvau_cycles_and_resources_are_finns():
    m = depthwise_only(channels=8, hw=12, k=3)
    rep = analyze_intmodel(m, "ZCU104", folding={"q": LayerFolding(8), "dw": LayerFolding(4, 3)}, cost_model="qatlab")
    r = rep.layers[1]
    assert (r.pe, r.simd) == (4, 3)
    assert r.cycles == 8 * 9 // 12 * 100  # (C·k_h·k_w)/(PE·SIMD) · output pixels
    info = op_infos(m)[1]
    spec = unit_spec(info, "qatlab")
    g = spec.extra["window"]
    ss = default_swu_simd(8, 4)
    assert r.swu_cycles == swu_cycles(g, ss) and r.swu_simd == ss
    acc = spec.acc.used
    want = (
        Resources(lut=mvau_hls_luts(4, 3, 8, 8, acc, True))
        + memory_resources("distributed", 6, 4 * 3 * 8)
        + thresholding_resources(4, 8, 8, acc)
        + Resources(lut=swu_luts(), bram18=swu_bram18(12, 8, 3, 1, ss, 8))
    )
    assert (r.lut, r.dsp, r.bram18, r.uram) == (want.lut, want.dsp, want.bram18, want.uram)
    assert r.weight_bits == 8 * 9 * 8 and r.ii_cycles == max(r.cycles, r.swu_cycles)


def test_vvau_under_the_finn_cost_model_is_finns_vvau_hls():
    m = depthwise_only(channels=8, hw=12, k=3)
    rep = analyze_intmodel(m, "ZCU104", folding={"q": LayerFolding(8), "dw": LayerFolding(4, 3)})
    r = rep.layers[1]
    info = op_infos(m)[1]
    spec = unit_spec(info)
    g, acc = spec.extra["window"], spec.acc.used
    a_signed = bool(info.in_qs[0] is not None and info.in_qs[0].qmin < 0)
    # SIMD 3 > 1: FINN's SetFolding puts the depthwise RTL window in parallel mode.
    swu = swu_rtl_cycles(g.ifm_h, g.ifm_w, 8, 3, 3, 1, 1, g.ofm_h, g.ofm_w, 4, True, True)
    assert r.swu_cycles == swu and r.cycles == 8 * 9 // 12 * 100
    want = Resources(lut=vvau_luts(4, 3, 8, 8, acc, 9, a_signed, 8, 8), bram18=vvau_bram18(6, 4 * 3 * 8)) + swu_rtl_resources(
        g.ifm_h, g.ifm_w, 8, 3, 3, 1, 1, 4, 8, True
    )
    assert (r.lut, r.dsp, r.bram18, r.uram) == (want.lut, want.dsp, want.bram18, want.uram)
    assert r.unit == "ConvolutionInputGenerator+VVAU" and r.ii_cycles == max(r.cycles, r.swu_cycles)


def test_choose_is_the_cheapest_folding_meeting_the_budget():
    dev = get_device("PYNQ-Z1")
    for info in op_infos(every_kind()):
        if info.role in ("gemm", "passthrough") or (info.role == "grouped" and not info.depthwise):
            continue
        spec = unit_spec(info)
        opts = [spec.cost(p, s) for p, s in spec.options()]
        for budget in sorted({o.ii for o in opts}) + [0]:
            got = choose(spec, dev, budget)
            meeting = [o for o in opts if o.ii <= budget]
            if meeting:
                assert got.ii <= budget
                assert _price(got.res, dev, {"lut": 0.7, "dsp": 0.8, "bram18": 0.8, "uram": 0.8}) == min(
                    _price(o.res, dev, {"lut": 0.7, "dsp": 0.8, "bram18": 0.8, "uram": 0.8}) for o in meeting
                )
            else:
                assert got.ii == min(o.ii for o in opts)


def test_a_slow_unit_becomes_the_bottleneck():
    m = every_kind()
    rep = analyze_intmodel(m, "ZCU104", folding={"*": LayerFolding(1, 1)})
    slow = max(rep.layers, key=lambda r: r.ii_cycles)
    assert slow.bottleneck and rep.totals["ii_cycles"] == slow.ii_cycles
    # every unit fully folded: the lookup tables run one element per cycle
    r = {x.layer: x for x in rep.layers}
    assert r["act2"].cycles == 800 and r["mp"].cycles == 8 * 25 * 4
    assert r["aap"].cycles == 8 * (2 + 3 + 2) ** 2  # uneven adaptive bins: every tap once
    assert r["se"].cycles == 72 + 8  # GlobalAccPool: the input, then one pass over the outputs
    assert r["cat"].cycles == 144 and r["res"].cycles == r["gate"].cycles == 72
    assert r["dw"].cycles == 8 * 9 * 100 and r["dw"].swu_cycles > 0


def _conv_lut_net() -> IntModel:
    bump = (torch.arange(256, dtype=torch.int32) - 128).abs()
    ops = [op("quantize", "q", ["x"], U8, (32, 16, 16), in_shape=(32, 16, 16)), conv("c1", "q", (32, 16, 16), 32, 3, pad=1)]
    src = "c1"
    for i in range(6):
        ops.append(op("lut", f"a{i}", [src], U8, (32, 16, 16), {"table": bump}, fn="hardswish"))
        src = f"a{i}"
    ops.append(conv("c2", src, (32, 16, 16), 32, 3, pad=1, seed=5))
    return IntModel(ops, "x", "c2", (32, 16, 16))


def test_fastest_design_leaves_room_for_the_units(monkeypatch):
    lim = {"lut": 0.1, "bram18": 0.2}
    dev = get_device("ZCU104")

    def within(rep):
        return rep.totals["lut"] <= lim["lut"] * dev.lut and rep.totals["bram18"] <= lim["bram18"] * dev.bram18

    joint = analyze_intmodel(_conv_lut_net(), dev, limits=lim)
    monkeypatch.setattr(network, "UNIT_ROUNDS", 0)
    alone = analyze_intmodel(_conv_lut_net(), dev, limits=lim)  # MVAUs searched as if alone
    assert within(joint) and not within(alone)
    assert joint.totals["fps"] < alone.totals["fps"]


def test_target_fps_sets_the_unit_budget():
    rep = analyze_intmodel(every_kind(), "ZCU104", target_fps=50_000)
    budget = int(rep.clock_mhz * 1e6 // 50_000)
    assert all(r.ii_cycles <= budget for r in rep.layers) and rep.totals["fps"] >= 50_000


def test_folding_errors_name_the_op():
    m = every_kind()
    with pytest.raises(FoldingError, match="'nope'"):
        analyze_intmodel(m, "ZCU104", folding={"*": LayerFolding(1, 1), "nope": LayerFolding(1, 1)})
    with pytest.raises(FoldingError, match="mapping of op name"):
        analyze_intmodel(m, "ZCU104", folding=[LayerFolding(1, 1)] * len(m.ops))
    with pytest.raises(FoldingError, match="'dw'.*PE=3"):
        analyze_intmodel(m, "ZCU104", folding={"*": LayerFolding(1, 1), "dw": LayerFolding(3, 1)})


def test_units_only_model_and_refused_ops():
    ops = [
        op("quantize", "q", ["x"], U8, (4, 8, 8), in_shape=(4, 8, 8)),
        op("maxpool", "mp", ["q"], U8, (4, 4, 4), kernel=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1)),
    ]
    rep = analyze_intmodel(IntModel(ops, "x", "mp", (4, 8, 8)), "PYNQ-Z1")
    assert [r.layer for r in rep.layers] == ["q", "mp"] and rep.totals["fits"]
    assert rep.layers[1].pe == 4  # no MVAU budget: the fastest folding
    wide = ActQ(0.01, 0, 0, 1023)
    m = every_kind()
    m.ops[3].out_q = wide  # the lut after gc now reads 10-bit codes
    with pytest.raises(UnsupportedOpError, match="10-bit"):
        analyze_intmodel(m, "ZCU104")


class _Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2)
        self.fc = nn.Linear(54, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.c2(torch.relu(self.c1(x)))), 1))


def test_converted_model_mvau_rows_equal_analyze():
    from qatlab.intmodel import convert
    from qatlab.nn import calibrate, prepare_qat
    from qatlab.quant import QuantSpec

    torch.manual_seed(0)
    q = prepare_qat(_Chain().eval(), QuantSpec(bits=8, granularity="channel"), QuantSpec(bits=8, symmetric=False))
    calibrate(q, [torch.randn(8, 1, 9, 9)])
    im = convert(q, (1, 9, 9))
    folds = {"c1": LayerFolding(2, 3), "c2": LayerFolding(3, 4), "fc": LayerFolding(5, 6)}
    names = [o.name for o in im.ops]
    mv = [o.name for o in im.compute_ops()]
    folding = dict(zip(mv, folds.values())) | {"*": LayerFolding(1, 1)}
    rep = analyze_intmodel(im, "ZCU104", folding=folding)
    assert [r.layer for r in rep.layers] == names
    base = analyze(from_intmodel(im), "ZCU104", folding=dict(zip(mv, folds.values())), params=params_from_intmodel(im))
    rows = {r.layer: r for r in rep.layers}
    for b in base.layers:
        assert (rows[b.layer].cycles, rows[b.layer].lut, rows[b.layer].bram18, rows[b.layer].dsp) == (b.cycles, b.lut, b.bram18, b.dsp)
    assert rep.totals["lut"] >= base.totals["lut"] and math.isfinite(rep.totals["fps"])
    assert np.isclose(rep.totals["macs_per_frame"], base.totals["macs_per_frame"])


def test_folding_file_round_trip_reproduces_the_design(tmp_path):
    from qatlab.hw.fpga import write_folding

    m = every_kind()
    rep = analyze_intmodel(m, "ZCU104")
    write_folding(rep.folding, tmp_path / "fold.json")
    again = analyze_intmodel(m, "ZCU104", folding=tmp_path / "fold.json")
    key = [(r.layer, r.pe, r.simd, r.ii_cycles, r.lut, r.bram18, r.dsp) for r in rep.layers]
    assert [(r.layer, r.pe, r.simd, r.ii_cycles, r.lut, r.bram18, r.dsp) for r in again.layers] == key
    assert again.totals["fps"] == rep.totals["fps"]
