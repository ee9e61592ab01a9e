"""The units of IntModel ops against FINN's own code: a max pool as finn-plus builds it
(``InferPool``: padding, sliding window, ``Pool_hls``), a padded conv (``InferConvInpGen``:
``FMPadding``, the window, then the MVAU or VVAU), the squeeze-excitation product
(``ElementwiseMul_hls``) and a table activation (``Lookup``); and every unit the
default model emits for the zoo's models has FINN reference cases.

``data/finn_reference.json`` holds FINN's values (``data/make_finn_reference.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.hw.fpga import analyze_intmodel
from qatlab.hw.fpga.cycles import swu_cycles, swu_rtl_cycles
from qatlab.hw.fpga.folding import LayerFolding
from qatlab.hw.fpga.geometry import Geometry
from qatlab.hw.fpga.model import layer_specs
from qatlab.hw.fpga.network import _padded_layer
from qatlab.hw.fpga.resources import Resources, finn_thresholding_resources
from qatlab.hw.fpga.units import FLOAT_BITS, _add_dtypes, _swu, elementwise_add_bits, unit_spec
from qatlab.hw.opgraph import op_infos
from qatlab.intmodel.model import ActQ, IntModel

from ..int_nets import _requant, conv, op

DATA = json.loads((Path(__file__).parent / "data" / "finn_reference.json").read_text())
METRICS = ("lut", "dsp", "bram18", "uram")


def _q(bits: int) -> ActQ:
    return ActQ(0.1, 0, 0, (1 << bits) - 1)


def pool_out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooled size (must stay identical to ``pool_out`` in make_finn_reference.py)."""
    n = size + 2 * p - k
    out = (-(-n // s) if ceil else n // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _info(model: IntModel, name: str):
    return next(i for i in op_infos(model) if i.name == name)


def _ids(kind: str) -> list[str]:
    return [f"{kind}{k}" for k in range(len(DATA[kind]))]


def _res(entry: dict) -> Resources:
    return Resources(**{k: entry[k] for k in METRICS})


@pytest.mark.parametrize("entry", DATA["maxpool"], ids=_ids("maxpool"))
def test_maxpool_is_finns_padding_window_and_pool(entry):
    c, want = entry["case"], entry["finn"]["nodes"]
    ch, (ih, iw), (kh, kw), (sh, sw), (ph, pw) = c["channels"], c["ifm"], c["kernel"], c["stride"], c["padding"]
    ceil = bool(c.get("ceil_mode"))
    oh, ow = pool_out(ih, kh, sh, ph, ceil), pool_out(iw, kw, sw, pw, ceil)
    q = _q(c["bits"])
    model = IntModel(
        [
            op("quantize", "q", ["x"], q, (ch, ih, iw), in_shape=(ch, ih, iw)),
            op(
                "maxpool", "mp", ["q"], q, (ch, oh, ow), kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(1, 1), ceil_mode=ceil
            ),
        ],
        "x",
        "mp",
        (ch, ih, iw),
        "float",
        {},
    )
    spec = unit_spec(_info(model, "mp"), "finn")
    assert spec.nodes == tuple(n["op"].rsplit("_", 1)[0] for n in want)
    opt = spec.cost(c["pe"])
    assert opt.cycles == {n["op"].rsplit("_", 1)[0]: n["cycles"] for n in want}
    total = Resources()
    for n in want:
        total = total + _res(n)
    assert opt.res == total
    assert opt.swu_simd == c["pe"]


def _padded_conv_model(c: dict) -> IntModel:
    ch, co, (ih, iw), (k, _), (s, _), (p, _) = c["channels"], c["out_channels"], c["ifm"], c["kernel"], c["stride"], c["padding"]
    groups = ch if c["depthwise"] else 1
    q = _q(c["a_bits"])
    layer = conv("c", "q", (ch, ih, iw), co, k, groups=groups, stride=s, pad=p, w_bits=c["w_bits"], a_bits=c["a_bits"])
    return IntModel([op("quantize", "q", ["x"], q, (ch, ih, iw), in_shape=(ch, ih, iw)), layer], "x", "c", (ch, ih, iw), "float", {})


@pytest.mark.parametrize("entry", DATA["padded_conv"], ids=_ids("padded_conv"))
def test_padded_conv_is_finns_padding_window_and_compute_unit(entry):
    """FINN's chain for a padded conv (``FMPadding_rtl``, the RTL window, the MVAU or
    VVAU): the same nodes, each node's cycles, and the padding + window's resources
    (the compute units' estimates are checked against their own cases)."""
    c, want = entry["case"], entry["finn"]["nodes"]
    model = _padded_conv_model(c)
    fold = LayerFolding(c["pe"], c["simd"], None if c["depthwise"] else c["swu_simd"], parallel_window=c["parallel_window"])
    rep = analyze_intmodel(model, c["device"], folding={"c": fold})
    row = next(r for r in rep.layers if r.layer == "c")
    assert row.swu_simd == c["swu_simd"]
    assert finn_nodes(row) == tuple(n["op"].rsplit("_", 1)[0] for n in want)
    compute = want[-1]["op"].rsplit("_", 1)[0]
    got = {"FMPadding": row.pad_cycles, "ConvolutionInputGenerator": row.swu_cycles, compute: row.cycles}
    assert got == {n["op"].rsplit("_", 1)[0]: n["cycles"] for n in want}
    assert [n["impl"] for n in want[:2]] == ["rtl", "rtl"]
    stream = _res(want[0]) + _res(want[1])
    assert _res(want[0]) == Resources()  # FINN estimates nothing for FMPadding_rtl
    if c["depthwise"]:
        spec = unit_spec(_info(model, "c"), "finn")
        _, window = _swu(spec.extra["window"], c["swu_simd"], c["a_bits"], "finn", parallel=c["simd"] > 1)
    else:
        (spec,) = layer_specs([_padded_layer(_info(model, "c"))])
        window = spec.window_cost(c["swu_simd"], c["parallel_window"])
    assert window == stream
    assert row.ii_cycles == max(got.values()) and row.pad_cycles <= row.swu_cycles


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(3, 12),
    st.integers(3, 12),
    st.sampled_from([1, 2, 3, 4, 6, 8, 12]),
    st.booleans(),
    st.data(),
)
def test_the_padding_never_outpaces_its_window(half_k, stride, pad, h, w, channels, parallel, data):
    """At the window's SIMD, FMPadding's ``H_pad·W_pad·C/SIMD`` is never above the
    window's cycles (RTL default or parallel style, HLS): it costs latency, never rate."""
    k = 2 * half_k - 1 if half_k > 1 else 3
    hp, wp = h + 2 * pad, w + 2 * pad
    if hp < k or wp < k:
        return
    oh, ow = (hp - k) // stride + 1, (wp - k) // stride + 1
    simd = data.draw(st.sampled_from([d for d in range(1, channels + 1) if channels % d == 0]))
    if parallel:
        simd = channels
    g = Geometry("c", "conv", 4, k * k * channels, hp, wp, channels, k, k, stride, stride, oh, ow, 1, "swu")
    pad_cyc = hp * wp * (channels // simd)
    assert pad_cyc <= swu_rtl_cycles(hp, wp, channels, k, k, stride, stride, oh, ow, simd, parallel)
    assert pad_cyc <= swu_cycles(g, simd)


def _add_model(c: dict) -> IntModel:
    """quantize a, quantize b (one scale, or two), optionally b's per-channel mean, then
    the add that requantizes their sum."""
    (h, w), ch = c["dim"], c["channels"]

    def q(bits: int, signed: bool, scale: float) -> ActQ:
        return ActQ(scale, 0, -(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else ActQ(scale, 0, 0, (1 << bits) - 1)

    lq = q(c["lhs_bits"], c["lhs_signed"], 0.1)
    rq = q(c["rhs_bits"], c["rhs_signed"], 0.1 if c["shared_scale"] else 0.07)
    ops = [
        op("quantize", "a", ["x"], lq, (ch, h, w), in_shape=(ch, h, w)),
        op("quantize", "b", ["x"], rq, (ch, h, w), in_shape=(ch, h, w)),
    ]
    rhs = "b"
    if c["broadcast"]:
        ops.append(op("mean", "se", ["b"], rq, (ch, 1, 1), _requant(), dims=(2, 3), keepdim=True, count=h * w))
        rhs = "se"
    req = {**{f"{k}_a": v for k, v in _requant().items()}, **{f"{k}_b": v for k, v in _requant().items()}}
    ops.append(op("add", "res", ["a", rhs], _q(c["out_bits"]), (ch, h, w), req))
    return IntModel(ops, "x", "res", (ch, h, w), "float", {})


@pytest.mark.parametrize("entry", DATA["elementwise_add"], ids=_ids("elementwise_add"))
def test_residual_add_is_finns_elementwise_chain(entry):
    """finn-plus' chain for an add: the same nodes (an ElementwiseMul per input when the
    scales differ), each node's cycles, the requantization's input width (FINN's
    minimized sum, or float) and the summed resources."""
    c, want = entry["case"], entry["finn"]["nodes"]
    info = _info(_add_model(c), "res")
    spec = unit_spec(info, "finn")
    assert spec.nodes == tuple(n["op"].rsplit("_", 1)[0] for n in want)
    assert {n["impl"] for n in want[:-1]} == {"hls"}  # int or float on a non-Versal part
    opt = spec.cost(c["pe"])
    muls = [n for n in want if n["op"].startswith("ElementwiseMul")]
    assert opt.cycles == {
        **{f"ElementwiseMul[{j}]": n["cycles"] for j, n in enumerate(muls)},
        "ElementwiseAdd": want[-2]["cycles"],
        "Thresholding": want[-1]["cycles"],
    }
    thr = want[-1]
    shared = c["shared_scale"]
    assert thr["in_float"] == (not shared)
    assert (elementwise_add_bits(*_add_dtypes(info)) if shared else FLOAT_BITS) == thr["in_bits"]
    total = Resources()
    for n in want:
        total = total + _res(n)
    assert opt.res == total


def test_elementwise_add_width_rule():
    """FINN's ``ElementwiseAdd`` width (its rule, not the exact range: the lhs is taken as
    the wider on a tie, so INT5 + UINT5 is declared INT6 though the sum reaches 46)."""
    cases = {
        (8, False, 8, False): 9,
        (8, False, 3, True): 10,  # the wider unsigned, the narrower signed: two bits
        (3, True, 8, False): 10,
        (2, True, 6, True): 7,
        (5, True, 5, False): 6,
        (5, False, 5, True): 7,
        (1, False, 1, False): 2,
    }
    assert {k: elementwise_add_bits(*k) for k in cases} == cases


def test_the_qatlab_cost_model_keeps_the_v010_add_chain():
    c = DATA["elementwise_add"][0]["case"]
    spec = unit_spec(_info(_add_model(c), "res"), "qatlab")
    assert spec.nodes == ("ChannelwiseOp", "AddStreams", "Thresholding")
    assert set(spec.cost(c["pe"]).cycles) == {"ChannelwiseOp", "AddStreams", "Thresholding"}


def _mul_model(c: dict) -> IntModel:
    (h, w), ch = c["dim"], c["channels"]
    lq, rq = _q(c["lhs_bits"]), _q(c["rhs_bits"])
    ops = [
        op("quantize", "a", ["x"], lq, (ch, h, w), in_shape=(ch, h, w)),
        op("quantize", "b", ["x"], rq, (ch, h, w), in_shape=(ch, h, w)),
    ]
    rhs = "b"
    if c["broadcast"]:  # the gate: one value per channel, as a squeeze-excitation's
        ops.append(op("mean", "se", ["b"], rq, (ch, 1, 1), _requant(), dims=(2, 3), keepdim=True, count=h * w))
        rhs = "se"
    ops.append(op("mul", "gate", ["a", rhs], _q(8), (ch, h, w), _requant()))
    return IntModel(ops, "x", "gate", (ch, h, w), "float", {})


@pytest.mark.parametrize("entry", DATA["elementwise_mul"], ids=_ids("elementwise_mul"))
def test_elementwise_mul_equals_finn(entry):
    c, want = entry["case"], entry["finn"]
    assert want["impl"] == "hls"  # int x int: SpecializeLayers' HLS variant on every part
    info = _info(_mul_model(c), "gate")
    spec = unit_spec(info, "finn")
    assert spec.nodes == ("ElementwiseMul", "Thresholding")
    opt = spec.cost(c["pe"])
    assert opt.cycles["ElementwiseMul"] == want["cycles"]
    # The requantization reads the product at FINN's minimized output width.
    thr_bits = sum(info.in_bits)
    assert thr_bits == want["out_bits"]
    thr = finn_thresholding_resources(c["pe"], c["channels"], info.out_bits, thr_bits)
    assert opt.res == thr + _res(want)


@pytest.mark.parametrize("entry", DATA["lookup"], ids=_ids("lookup"))
def test_lookup_equals_finn(entry):
    c, want = entry["case"], entry["finn"]
    (h, w), ch = c["dim"], c["channels"]
    n = 1 << c["in_bits"]
    bump = (torch.arange(n, dtype=torch.int32) - n // 2).abs() % (1 << c["out_bits"])  # not monotone
    model = IntModel(
        [
            op("quantize", "q", ["x"], _q(c["in_bits"]), (ch, h, w), in_shape=(ch, h, w)),
            op("lut", "act", ["q"], _q(c["out_bits"]), (ch, h, w), {"table": bump}, fn="hardswish"),
        ],
        "x",
        "act",
        (ch, h, w),
        "float",
        {},
    )
    spec = unit_spec(_info(model, "act"), "finn")
    assert spec.nodes == ("Lookup",) and spec.options() == [(1, 1)]  # FINN's Lookup has no PE
    opt = spec.cost(1)
    assert want["default_ram_style"] == opt.ram_style
    assert (opt.cycles, opt.res) == ({"Lookup": want["cycles"]}, _res(want))


# ---- every unit of the zoo's models has FINN reference cases ----------------------------

# Which reference cases check each FINN node the default model can emit.
NODE_CASES = {
    "MVAU": lambda: DATA["mvau"],
    "ConvolutionInputGenerator": lambda: DATA["swu"],
    "VVAU": lambda: DATA["vvau"],
    "Thresholding": lambda: DATA["thresholding"],
    "FMPadding": lambda: [n for e in DATA["maxpool"] + DATA["padded_conv"] for n in e["finn"]["nodes"] if n["op"].startswith("FMPadding")],
    "Pool": lambda: [e for e in DATA["units"] if e["case"]["kind"] == "pool"] + DATA["maxpool"],
    "StreamingConcat": lambda: [e for e in DATA["units"] if e["case"]["kind"] == "concat"],
    "GlobalAccPool": lambda: [e for e in DATA["units"] if e["case"]["kind"] == "globalaccpool"],
    "ChannelwiseOp": lambda: [e for e in DATA["units"] if e["case"]["kind"] == "channelwise"],
    "AddStreams": lambda: [e for e in DATA["units"] if e["case"]["kind"] == "addstreams"],
    "ElementwiseMul": lambda: DATA["elementwise_mul"] + DATA["elementwise_add"],
    "ElementwiseAdd": lambda: DATA["elementwise_add"],
    "Lookup": lambda: DATA["lookup"],
}
# An MVAU row's unit names the window in front of it (none: a 1x1 or a vector).
MVAU_WINDOW = {"swu": ("ConvolutionInputGenerator",), "ds": ("ConvolutionInputGenerator",), "none": ()}


def _zoo_intmodel(name: str, shape: tuple[int, int, int]) -> IntModel:
    from qatlab.intmodel import convert
    from qatlab.models import build_model
    from qatlab.nn import calibrate, prepare_qat
    from qatlab.quant import QuantSpec

    torch.manual_seed(0)
    model = build_model(name, 10, shape)
    model.train()  # running statistics from data, as after training
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, *shape))
    q = prepare_qat(model.eval(), QuantSpec(bits=8, granularity="channel"), QuantSpec(bits=8, symmetric=False))
    calibrate(q, [torch.randn(16, *shape) for _ in range(2)])
    return convert(q, shape)


def finn_nodes(row) -> tuple[str, ...]:
    """The FINN nodes behind one row of the default model's report."""
    if row.kind in ("conv", "linear") and row.unit in MVAU_WINDOW:
        return ("FMPadding",) * bool(row.pad_cycles) + MVAU_WINDOW[row.unit] + ("MVAU",)
    return () if row.unit == "passthrough" else tuple(row.unit.split("+"))


@pytest.mark.parametrize(("name", "shape"), [("lenet", (1, 28, 28)), ("resnet8", (3, 16, 16)), ("mobilenet", (3, 16, 16))])
def test_every_unit_of_the_zoo_models_has_finn_cases(name, shape):
    rep = analyze_intmodel(_zoo_intmodel(name, shape), "ZCU104")
    emitted = {n for r in rep.layers for n in finn_nodes(r)}
    unchecked = sorted(n for n in emitted if n not in NODE_CASES or not NODE_CASES[n]())
    assert not unchecked, f"{name}: no FINN reference cases for {unchecked}"
    impls = {e["finn"]["impl"] for e in DATA["mvau"]}
    assert {r.impl.split("-")[0] for r in rep.layers if "MVAU" in finn_nodes(r)} <= impls
    assert {"MVAU", "Thresholding"} <= emitted


def test_every_node_a_unit_names_has_a_reference_mapping():
    """Every op kind (``every_kind``) under the default model names only nodes with FINN
    cases: a new unit without them fails here, not silently."""
    from ..int_nets import every_kind

    named = {n for i in op_infos(every_kind()) if i.role not in ("gemm",) for n in unit_spec_nodes(i)}
    assert {"Lookup", "ElementwiseMul", "FMPadding", "Pool", "GlobalAccPool", "StreamingConcat", "VVAU"} <= named
    missing = sorted(n for n in named if n not in NODE_CASES or not NODE_CASES[n]())
    assert not missing, f"no FINN reference cases for {missing}"


def unit_spec_nodes(info) -> tuple[str, ...]:
    if info.role == "grouped" and not info.depthwise:
        return ("MVAU",)
    return unit_spec(info, "finn").nodes


def test_finn_lookup_rule_and_bad_table():
    from qatlab.hw.fpga import FpgaError
    from qatlab.hw.fpga.resources import finn_lookup_bram18

    assert [finn_lookup_bram18(n, b) for n, b in ((256, 8), (1024, 16), (1025, 16), (256, 17))] == [1, 1, 2, 2]
    with pytest.raises(FpgaError, match="entries and output bits >= 1, got 0 and 8"):
        finn_lookup_bram18(0, 8)
