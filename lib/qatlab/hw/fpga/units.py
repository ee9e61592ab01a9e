"""FINN's streaming units for the IntModel ops that are not a matrix-vector product.

Each op becomes a short chain of FINN nodes; its cycles per frame are FINN's
``get_exp_cycles`` of those nodes (src/finn/custom_op/fpgadataflow/), its resources
FINN's estimators. Under ``cost_model="finn"`` (the default) that is all: a node FINN
does not estimate costs nothing, the depthwise window is FINN's RTL one and the VVAU
keeps its thresholds (FINN's default build; docs/fpga-finn.md). Under ``"qatlab"``
the costs below marked "ours" are added and the window is the HLS one:

==========================  =================================================  ====================================
IntModel op                 FINN nodes                                         cycles per frame (``P`` = PE)
==========================  =================================================  ====================================
depthwise conv              (FMPadding if padded +) ConvolutionInputGenerator  SWU as :mod:`.cycles`;
                            (depthwise) + VVAU + Thresholding                  VVAU ``C·k_h·k_w/(P·SIMD) · pixels``;
                                                                               FMPadding ``padded H·W·C/SIMD``
quantize, relu, clamp,      Thresholding (MultiThreshold in hardware)          ``pixels · C/P``
monotone lut
other lut                   Lookup (FINN's: one table, no PE; ours: a ROM      ``pixels · C`` (FINN);
                            of the table per PE)                               ``pixels · C/P`` (ours)
add                         FINN: (ElementwiseMul per input if the scales      ``pixels · C/P``
                            differ +) ElementwiseAdd + Thresholding; ours
                            (Xilinx FINN v0.10): ChannelwiseOp (scale
                            alignment) + AddStreams + Thresholding
mul                         ElementwiseMul + Thresholding                      ``pixels · C/P``
cat                         StreamingConcat (+ Thresholding per input that     ``out elements / P``
                            needs requantization)
maxpool, avgpool            (FMPadding if padded +) ConvolutionInputGenerator  Pool ``C·k_h·k_w/P · out pixels``
                            + Pool (+ Thresholding for the average's           (adaptive: the sum of its bins / P);
                            requantization): finn-plus' InferPool, for a       FMPadding ``padded H·W·C/P``
                            max pool whose kernel equals its stride too
mean                        GlobalAccPool + Thresholding                       ``in elements/P + out elements/P``
flatten, reshape, permute,  none: the stream is re-read in place               0
slice
==========================  =================================================  ====================================

Sources (FINN, src/finn/custom_op/fpgadataflow/): ``vectorvectoractivation.py``
(``VVAU.get_exp_cycles``, ``lut_estimation``: FINN-R's ``c0 + c1·PE·(mult + adder
tree + acc)`` with SIMD lanes over the kernel and the A2Q accumulator bound,
``bram_estimation`` / ``calc_wmem``: ``k_h·k_w·C/(PE·SIMD)`` words of ``PE·SIMD·W``
bits, ``dsp_estimation``: none with LUT multipliers, FINN's resType default);
``thresholding.py`` (``Thresholding.get_exp_cycles``; memories as
:func:`.resources.thresholding_resources`); ``elementwise_binary.py`` (ElementwiseAdd:
the folded output per cycle, no estimate for streamed operands or a scalar constant);
``addstreams.py`` (v0.10)
(``AddStreams.get_exp_cycles``; no resource estimate in FINN: we count a
``bits + 1`` wide adder per PE, one LUT per bit); ``channelwise_op.py``
(``ChannelwiseOp.get_exp_cycles``; its multiplier ours, FINN-R's multiplier term);
``elementwise_binary.py`` (ElementwiseMul_hls: the same cycles, no estimate for two
streamed operands; ours a multiplier per PE, FINN-R's term, plus a buffer for a
broadcast operand); ``concat.py``
(``StreamingConcat.get_exp_cycles``; no estimate); ``pool.py``
(``Pool.get_exp_cycles``; no estimate: we count one accumulator or comparator per PE);
``globalaccpool.py`` (``GlobalAccPool.get_exp_cycles``; no estimate: an accumulator per
PE and a partial-sum memory); ``fmpadding.py`` (``FMPadding.get_exp_cycles``; no
estimate); ``lookup.py`` (``Lookup``: one element per cycle, ``bram_estimation``
``ceil(width/16)·ceil(entries/1024)``; ours a table per PE by the RAMB18 rule). The
sliding window is FINN's RTL one by default, the HLS one under ours, as for the MVAU
(:mod:`.cycles`, :mod:`.resources`), its SIMD the VVAU's or Pool's PE (FINN requires the depthwise window to match it).
A stage whose input and output stream widths differ is joined by a
DataWidthConverter that FINN sizes as a FIFO; we do not cost it (nor FIFOs between
these units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qatlab.hw.opgraph import OpInfo, UnsupportedOpError, stream_dims

from .accumulator import AccumulatorBits, accumulator_bits
from .convert import _ints
from .cycles import swu_cycles, swu_rtl_cycles
from .devices import FINN_RES_LIMITS, Device
from .errors import FoldingError
from .folding import default_swu_simd
from .geometry import Geometry
from .resources import (
    Resources,
    a2q_acc_bits,
    check_cost_model,
    finn_lookup_bram18,
    finn_thresholding_resources,
    memory_resources,
    mvau_hls_luts,
    resolve_ram_style,
    swu_bram18,
    swu_luts,
    swu_rtl_resources,
    thresholding_resources,
    vvau_bram18,
    vvau_luts,
)
from .search import divisors

# Scale alignment of an add's two inputs: each is multiplied by its requantization
# multiplier as a 16-bit fixed-point constant (a ChannelwiseOp Mul) before the sum.
ALIGN_FRAC_BITS = 16


def mult_luts(a_bits: int, b_bits: int) -> int:
    """FINN-R's LUT multiplier term for one product (``MVAU_hls.lut_estimation``):
    ``(2·ceil((A+B)/6) - 1) · (A+B)``."""
    wa = a_bits + b_bits
    return (2 * math.ceil(wa / 6) - 1) * wa


# A float stream's width (FLOAT32): the sum of two inputs that keep their own scales.
FLOAT_BITS = 32


def elementwise_add_bits(a_bits: int, a_signed: bool, b_bits: int, b_signed: bool) -> int:
    """FINN ``ElementwiseAdd._derive_out_dtype`` (after ``minimize_accumulator_width``):
    one bit above the wider input, two when the wider is unsigned and the narrower signed."""
    wide, narrow = ((a_bits, a_signed), (b_bits, b_signed)) if a_bits >= b_bits else ((b_bits, b_signed), (a_bits, a_signed))
    if (a_signed or b_signed) and not wide[1] and narrow[1]:
        return wide[0] + 2
    return wide[0] + 1


def _add_dtypes(info: OpInfo) -> tuple[int, bool, int, bool]:
    (qa, qb), (a, b) = info.in_qs, info.in_bits
    return a, bool(qa is not None and qa.qmin < 0), b, bool(qb is not None and qb.qmin < 0)


def shared_scale(info: OpInfo) -> bool:
    """Whether an add's inputs share one scale: FINN's streamlining then moves the scale
    past the add (``MoveMulPastJoinAdd``) and sums integers; otherwise each input keeps a
    Mul by its scale, which becomes an ``ElementwiseMul`` with a float constant, and the
    sum is a float stream. Zero points never add a node: their constant offsets move
    past the add (``MoveLinearPastEltwiseAdd``) into the thresholds."""
    qa, qb = info.in_qs
    return qa is not None and qb is not None and float(qa.scale) == float(qb.scale)


def vvau_cycles(channels: int, k_h: int, k_w: int, pixels: int, pe: int, simd: int) -> int:
    """FINN ``VVAU.get_exp_cycles``: ``(C·k_h·k_w)/(PE·SIMD) · output pixels``."""
    return (channels * k_h * k_w) // (pe * simd) * pixels


def stream_cycles(pixels: int, channels: int, pe: int) -> int:
    """``np.prod(folded output shape[:-1])`` of FINN's one-element-per-lane units
    (Thresholding, AddStreams, ChannelwiseOp, ElementwiseMul, Lookup): ``pixels · C/PE``."""
    return pixels * (channels // pe)


def pool_cycles(taps: int, pe: int) -> int:
    """FINN ``Pool.get_exp_cycles``: ``(C·k_h·k_w)/PE · output pixels`` = window taps / PE."""
    return taps // pe


def globalaccpool_cycles(in_elems: int, out_elems: int, pe: int) -> int:
    """FINN ``GlobalAccPool.get_exp_cycles``: the folded input plus one output pass,
    ``in elements/PE + out elements/PE`` (``C/PE`` for a global average)."""
    return in_elems // pe + out_elems // pe


@dataclass(frozen=True)
class UnitOption:
    """One folding of an op's units and what it costs."""

    pe: int
    simd: int
    cycles: dict[str, int]  # per FINN node
    res: Resources
    swu_simd: int | None = None
    wmem_depth: int = 0
    wmem_width: int = 0
    ram_style: str = ""

    @property
    def ii(self) -> int:
        return max(self.cycles.values(), default=0)


@dataclass
class UnitSpec:
    """An op as FINN streaming units: which nodes, which axes PE and SIMD divide."""

    info: OpInfo
    nodes: tuple[str, ...]
    pe_axis: int  # PE must divide this (1: no parallelism to choose)
    simd_axis: int = 1
    acc: AccumulatorBits | None = None
    weight_bits: int = 0
    line_buffer_bits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    cost_model: str = "finn"  # finn: FINN's estimators only; qatlab: ours where FINN has none

    @property
    def name(self) -> str:
        return self.info.name

    def options(self) -> list[tuple[int, int]]:
        return [(p, s) for p in divisors(self.pe_axis) for s in divisors(self.simd_axis)]

    def cost(self, pe: int, simd: int = 1) -> UnitOption:
        """Cycles and resources at one folding (PE must divide ``pe_axis``, SIMD ``simd_axis``)."""
        if pe < 1 or self.pe_axis % pe or simd < 1 or self.simd_axis % simd:
            raise FoldingError(f"op {self.name!r}: PE={pe} must divide {self.pe_axis} and SIMD={simd} must divide {self.simd_axis}")
        return _COST[self.info.kind if self.info.role != "grouped" else "depthwise"](self, pe, simd)


# ---- cost of each op kind at a folding -------------------------------------------------


def _thr(pe: int, channels: int, out_bits: int, thr_bits: int, cost_model: str = "qatlab") -> Resources:
    if cost_model == "finn":
        return finn_thresholding_resources(pe, channels, out_bits, thr_bits)
    return thresholding_resources(pe, channels, out_bits, thr_bits)


def _ours(spec: UnitSpec, res: Resources) -> Resources:
    """A cost FINN does not estimate (AddStreams, ChannelwiseOp, Pool, ...): ours under
    the qatlab cost model, nothing under FINN's."""
    return res if spec.cost_model == "qatlab" else Resources()


def _swu(g: Geometry, simd: int, a_bits: int, cost_model: str = "qatlab", parallel: bool = False) -> tuple[int, Resources]:
    """The depthwise window in front of a VVAU or Pool: FINN's RTL one (``depthwise=1``)
    under the FINN cost model, the HLS one under ours."""
    if cost_model == "finn":
        cyc = g.batch * swu_rtl_cycles(
            g.ifm_h, g.ifm_w, g.channels, g.k_h, g.k_w, g.stride_h, g.stride_w, g.ofm_h, g.ofm_w, simd, parallel, depthwise=True
        )
        return cyc, swu_rtl_resources(g.ifm_h, g.ifm_w, g.channels, g.k_h, g.k_w, g.stride_h, g.stride_w, simd, a_bits, parallel)
    return swu_cycles(g, simd), Resources(lut=swu_luts(), bram18=swu_bram18(g.ifm_w, g.channels, g.k_h, g.stride_h, simd, a_bits))


def _elementwise(spec: UnitSpec, pe: int, simd: int) -> UnitOption:
    i = spec.info
    pix, ch = stream_dims(i.out_shape)
    c = stream_cycles(pix, ch, pe)
    k = i.kind
    cm = spec.cost_model
    if k == "quantize":
        return UnitOption(pe, 1, {"Thresholding": c}, _thr(pe, ch, i.out_bits, 32, cm))
    if k in ("relu", "clamp"):
        return UnitOption(pe, 1, {"Thresholding": c}, _thr(pe, ch, i.out_bits, i.in_bits[0], cm))
    if k == "lut":
        if spec.extra["monotone"]:
            return UnitOption(pe, 1, {"Thresholding": c}, _thr(pe, ch, i.out_bits, i.in_bits[0], cm))
        depth = spec.extra["entries"]
        if cm == "finn":
            # FINN's Lookup: no PE, one element per cycle, the table in BRAM (its default).
            res = Resources(bram18=finn_lookup_bram18(depth, i.out_bits))
            return UnitOption(1, 1, {"Lookup": pix * ch}, res, wmem_depth=depth, wmem_width=i.out_bits, ram_style="block")
        style = resolve_ram_style("auto", depth)
        rom = memory_resources(style, depth, i.out_bits)
        res = Resources(rom.lut * pe, rom.dsp * pe, rom.bram18 * pe, rom.uram * pe)
        return UnitOption(pe, 1, {"Lookup": c}, res, wmem_depth=depth, wmem_width=i.out_bits, ram_style=style)
    if k == "add" and cm == "finn":
        # finn-plus: ElementwiseAdd_hls (plus an ElementwiseMul_hls per input that keeps
        # its own scale); none of them estimates anything for streamed operands or a
        # scalar constant, so the cost is the requantizing Thresholding's.
        shared = spec.extra["shared_scale"]
        thr_bits = elementwise_add_bits(*_add_dtypes(i)) if shared else FLOAT_BITS
        # A scale's ElementwiseMul streams its own input (a broadcast one is shorter).
        cycles = {} if shared else {f"ElementwiseMul[{j}]": stream_cycles(*stream_dims(i.in_shapes[j]), pe) for j in (0, 1)}
        return UnitOption(pe, 1, {**cycles, "ElementwiseAdd": c, "Thresholding": c}, _thr(pe, ch, i.out_bits, thr_bits, cm))
    if k == "add":
        # Xilinx FINN v0.10's chain: a ChannelwiseOp multiplier per input aligns the
        # scales in 16-bit fixed point, AddStreams sums, Thresholding requantizes.
        a, b = i.in_bits
        aligned = max(a, b) + ALIGN_FRAC_BITS
        res = Resources(lut=pe * (mult_luts(a, ALIGN_FRAC_BITS) + mult_luts(b, ALIGN_FRAC_BITS))) + Resources(lut=pe * (aligned + 1))
        res = res + _thr(pe, ch, i.out_bits, aligned + 1, cm)
        return UnitOption(pe, 1, {"ChannelwiseOp": c, "AddStreams": c, "Thresholding": c}, res)
    if k == "mul":
        a, b = i.in_bits
        res = _ours(spec, Resources(lut=pe * mult_luts(a, b))) + _thr(pe, ch, i.out_bits, a + b, cm)
        small = min(i.in_elems(0), i.in_elems(1))
        if small < i.out_elems:  # the broadcast operand is held for the frame
            depth = -(-small // pe)
            style = resolve_ram_style("auto", depth)
            res = res + _ours(spec, memory_resources(style, depth, pe * min(a, b)))
        return UnitOption(pe, 1, {"ElementwiseMul": c, "Thresholding": c}, res)
    raise UnsupportedOpError(f"op {i.name!r}: kind {k!r} is not elementwise")


def _cat(spec: UnitSpec, pe: int, simd: int) -> UnitOption:
    i = spec.info
    cycles = {"StreamingConcat": i.out_elems // pe}
    res = Resources()
    for j in i.requantized_inputs():
        pix, ch = stream_dims(i.in_shapes[j])
        cycles[f"Thresholding[{j}]"] = stream_cycles(pix, ch, pe)
        res = res + _thr(pe, ch, i.out_bits, i.in_bits[j], spec.cost_model)
    return UnitOption(pe, 1, cycles, res)


def _pool(spec: UnitSpec, pe: int, simd: int) -> UnitOption:
    i = spec.info
    a_bits = i.in_bits[0]
    ch = i.in_shapes[0][0]
    cycles: dict[str, int] = {}
    res = Resources()
    g: Geometry | None = spec.extra.get("window")
    pad = spec.extra.get("padding", (0, 0))
    if g is not None and pad != (0, 0):
        # FINN's InferConvInpGen puts an FMPadding_rtl before a padded window: it
        # streams the padded image (g's input size), SIMD = the window's; no estimate.
        cycles["FMPadding"] = g.ifm_h * g.ifm_w * (ch // pe)
    if g is not None:
        cycles["ConvolutionInputGenerator"], r = _swu(g, pe, a_bits, spec.cost_model)
        res = res + r
    cycles["Pool"] = pool_cycles(i.reduction_taps(), pe)
    if i.kind == "maxpool":
        return UnitOption(pe, 1, cycles, res + _ours(spec, Resources(lut=pe * a_bits)), swu_simd=pe if g else None)
    acc = spec.acc.used if spec.acc else a_bits
    pix, _ = stream_dims(i.out_shape)
    cycles["Thresholding"] = stream_cycles(pix, ch, pe)
    res = res + _ours(spec, Resources(lut=pe * acc)) + _thr(pe, ch, i.out_bits, acc, spec.cost_model)
    return UnitOption(pe, 1, cycles, res, swu_simd=pe if g else None)


def _mean(spec: UnitSpec, pe: int, simd: int) -> UnitOption:
    i = spec.info
    acc = spec.acc.used if spec.acc else i.in_bits[0]
    pix, ch = stream_dims(i.out_shape)
    depth = max(1, i.out_elems // pe)
    style = resolve_ram_style("auto", depth)
    res = _ours(spec, Resources(lut=pe * acc) + memory_resources(style, depth, pe * acc)) + _thr(pe, ch, i.out_bits, acc, spec.cost_model)
    cycles = {"GlobalAccPool": globalaccpool_cycles(i.in_elems(0), i.out_elems, pe), "Thresholding": stream_cycles(pix, ch, pe)}
    return UnitOption(pe, 1, cycles, res, wmem_depth=depth, wmem_width=pe * acc, ram_style=style)


def _depthwise(spec: UnitSpec, pe: int, simd: int) -> UnitOption:
    i = spec.info
    a = i.op.attrs
    w_bits, a_bits = int(a["w_bits"]), i.in_bits[0]
    c_out = i.out_shape[0]
    kh, kw = (int(v) for v in spec.extra["kernel"])
    pix = i.out_shape[1] * i.out_shape[2]
    g: Geometry = spec.extra["window"]
    ss = default_swu_simd(g.channels, pe)
    a_signed = bool(i.in_qs[0] is not None and i.in_qs[0].qmin < 0)
    # FINN's SetFolding turns the RTL window's parallel mode on once the VVAU's SIMD is above 1.
    swu_c, swu_r = _swu(g, ss, a_bits, spec.cost_model, parallel=simd > 1)
    pad: dict[str, int] = {}
    if spec.extra.get("padding", (0, 0)) != (0, 0):
        # InferConvInpGen's FMPadding_rtl before the window, at the window's SIMD; no estimate.
        pad["FMPadding"] = g.batch * g.ifm_h * g.ifm_w * (g.channels // ss)
    acc = spec.acc.used if spec.acc else a_bits + w_bits + math.ceil(math.log2(kh * kw))
    if spec.cost_model == "finn":
        # VVAU_hls with its thresholds inside (FINN's default build), as FINN estimates it.
        depth = kh * kw * c_out // (pe * simd)
        width = pe * simd * w_bits
        res = swu_r + Resources(
            lut=vvau_luts(pe, simd, w_bits, a_bits, acc, kh * kw, a_signed, i.out_bits, c_out), bram18=vvau_bram18(depth, width)
        )
        cycles = {**pad, "ConvolutionInputGenerator": swu_c, "VVAU": vvau_cycles(c_out, kh, kw, pix, pe, simd)}
        style = "auto"
        return UnitOption(pe, simd, cycles, res, swu_simd=ss, wmem_depth=depth, wmem_width=width, ram_style=style)
    lut_acc = min(acc, a2q_acc_bits(kh * kw, w_bits, a_bits, a_signed))
    compute = Resources(lut=mvau_hls_luts(pe, simd, w_bits, a_bits, lut_acc, True))
    depth = kh * kw * c_out // (pe * simd)
    width = pe * simd * w_bits
    style = resolve_ram_style("auto", depth)
    res = swu_r + compute + memory_resources(style, depth, width) + _thr(pe, c_out, i.out_bits, acc)
    cycles = {
        **pad,
        "ConvolutionInputGenerator": swu_c,
        "VVAU": vvau_cycles(c_out, kh, kw, pix, pe, simd),
        "Thresholding": stream_cycles(pix, c_out, pe),
    }
    return UnitOption(pe, simd, cycles, res, swu_simd=ss, wmem_depth=depth, wmem_width=width, ram_style=style)


def _passthrough(spec: UnitSpec, pe: int, simd: int) -> UnitOption:
    return UnitOption(1, 1, {}, Resources())


_COST = {
    "quantize": _elementwise,
    "relu": _elementwise,
    "clamp": _elementwise,
    "lut": _elementwise,
    "add": _elementwise,
    "mul": _elementwise,
    "cat": _cat,
    "avgpool": _pool,
    "maxpool": _pool,
    "mean": _mean,
    "depthwise": _depthwise,
    "flatten": _passthrough,
    "reshape": _passthrough,
    "permute": _passthrough,
    "slice": _passthrough,
}


# ---- building the specs ------------------------------------------------------------------


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _window(
    name: str,
    in_shape: tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    out_shape: tuple[int, ...],
) -> Geometry:
    """The sliding window's view of a padded input (padding folded in, as for the MVAU)."""
    c, h, w = in_shape
    kh, kw = ((kernel[0] - 1) * dilation[0] + 1, (kernel[1] - 1) * dilation[1] + 1)
    return Geometry(
        name,
        "conv",
        out_shape[0],
        kh * kw,
        h + 2 * padding[0],
        w + 2 * padding[1],
        c,
        kh,
        kw,
        stride[0],
        stride[1],
        out_shape[1],
        out_shape[2],
        1,
        "swu",
    )


def _monotone(table: Any) -> bool:
    t = np.asarray(table.cpu().numpy() if hasattr(table, "cpu") else table, dtype=np.int64).reshape(-1)
    return bool(np.all(np.diff(t) >= 0))


def unit_spec(info: OpInfo, cost_model: str = "finn") -> UnitSpec:
    """The FINN units of one non-MVAU op (a depthwise conv, a vector or pass-through op)."""
    check_cost_model(cost_model)
    spec = _unit_spec(info)
    spec.cost_model = cost_model
    if cost_model == "finn" and info.role == "grouped":
        spec.nodes = tuple(n for n in spec.nodes if n != "Thresholding")  # thresholds inside the VVAU_hls
    if cost_model == "finn" and info.kind == "add":
        mul = () if spec.extra["shared_scale"] else ("ElementwiseMul", "ElementwiseMul")
        spec.nodes = mul + ("ElementwiseAdd", "Thresholding")
    if cost_model == "finn" and spec.nodes == ("Lookup",):
        spec.pe_axis = 1  # FINN's Lookup has no PE
    return spec


def _unit_spec(info: OpInfo) -> UnitSpec:
    k = info.kind
    a = info.op.attrs
    if info.role == "passthrough":
        return UnitSpec(info, (), 1)
    if info.role == "grouped":
        if not info.depthwise:
            raise UnsupportedOpError(f"op {info.name!r}: a grouped (not depthwise) conv is an MVAU, not a unit")
        w = info.op.tensors["weight"]
        c_out = int(w.shape[0])
        kernel = _pair(a["kernel"])
        dil = _pair(a.get("dilation", (1, 1)))
        g = _window(info.name, info.in_shapes[0], kernel, _pair(a["stride"]), _pair(a["padding"]), dil, info.out_shape)
        wk = _ints(w).reshape(c_out, -1)
        if dil != (1, 1):
            full = np.zeros((c_out, g.k_h, g.k_w), dtype=np.int64)
            full[:, :: dil[0], :: dil[1]] = wk.reshape(c_out, kernel[0], kernel[1])
            wk = full.reshape(c_out, -1)
        q = info.in_qs[0]
        acc = accumulator_bits(g.k_h * g.k_w, int(a["w_bits"]), info.in_bits[0], weights=wk, a_signed=bool(q is not None and q.qmin < 0))
        pad = _pair(a["padding"])
        return UnitSpec(
            info,
            (("FMPadding",) if pad != (0, 0) else ()) + ("ConvolutionInputGenerator", "VVAU", "Thresholding"),
            c_out,
            g.k_h * g.k_w,
            acc=acc,
            weight_bits=c_out * g.k_h * g.k_w * int(a["w_bits"]),
            line_buffer_bits=(g.k_h + g.stride_h) * g.ifm_w * g.channels * info.in_bits[0],
            extra={"kernel": (g.k_h, g.k_w), "window": g, "padding": pad},
        )
    if k in ("quantize", "relu", "clamp"):
        return UnitSpec(info, ("Thresholding",), stream_dims(info.out_shape)[1])
    if k == "lut":
        if info.in_bits[0] > 8:
            raise UnsupportedOpError(f"op {info.name!r}: a lut on {info.in_bits[0]}-bit inputs (at most 8)")
        mono = _monotone(info.op.tensors["table"])
        q = info.in_qs[0]
        return UnitSpec(
            info,
            ("Thresholding",) if mono else ("Lookup",),
            stream_dims(info.out_shape)[1],
            extra={"monotone": mono, "entries": int(q.qmax - q.qmin + 1)},
        )
    if k == "add":
        return UnitSpec(
            info,
            ("ChannelwiseOp", "AddStreams", "Thresholding"),
            stream_dims(info.out_shape)[1],
            extra={"shared_scale": shared_scale(info)},
        )
    if k == "mul":
        return UnitSpec(info, ("ElementwiseMul", "Thresholding"), stream_dims(info.out_shape)[1])
    if k == "cat":
        ch = math.gcd(*(s[0] for s in info.in_shapes)) if info.in_shapes else 1
        return UnitSpec(info, ("StreamingConcat",) + tuple("Thresholding" for _ in info.requantized_inputs()), ch)
    if k in ("avgpool", "maxpool"):
        ch = info.in_shapes[0][0]
        extra: dict[str, Any] = {}
        nodes: tuple[str, ...] = ("Pool",)
        if not a.get("adaptive"):
            extra["padding"] = _pair(a.get("padding", (0, 0)))
            extra["window"] = _window(
                info.name,
                info.in_shapes[0],
                _pair(a["kernel"]),
                _pair(a["stride"]),
                _pair(a.get("padding", (0, 0))),
                _pair(a.get("dilation", (1, 1))),
                info.out_shape,
            )
            nodes = ("FMPadding",) if extra["padding"] != (0, 0) else ()
            nodes = nodes + ("ConvolutionInputGenerator", "Pool")
        acc = None
        if k == "avgpool":
            kh, kw = info.window()
            # A window sum of k_h·k_w codes (signed after the zero point comes off).
            bits = info.in_bits[0] + math.ceil(math.log2(kh * kw)) + 1
            acc = AccumulatorBits(bits, bits, bits)
            nodes = nodes + ("Thresholding",)
        return UnitSpec(info, nodes, ch, acc=acc, extra=extra)
    if k == "mean":
        count = info.in_elems(0) // max(info.out_elems, 1)
        bits = info.in_bits[0] + math.ceil(math.log2(max(count, 1))) + 1
        return UnitSpec(info, ("GlobalAccPool", "Thresholding"), stream_dims(info.out_shape)[1], acc=AccumulatorBits(bits, bits, bits))
    raise UnsupportedOpError(f"op {info.name!r}: kind {k!r} has no FINN unit model")


# ---- folding choice ----------------------------------------------------------------------


def _price(res: Resources, device: Device, limits: dict[str, float]) -> float:
    total = 0.0
    for r, v in res.as_dict().items():
        cap = device.capacity(r) * limits[r]
        if v and cap <= 0:
            return math.inf
        total += v / cap if cap > 0 else 0.0
    return total


def choose(spec: UnitSpec, device: Device, budget_cycles: int | None, limits: dict[str, float] | None = None) -> UnitOption:
    """The cheapest folding whose slowest node meets ``budget_cycles`` (FINN's SetFolding
    target), else the fastest folding; ``None``: the fastest."""
    lim = dict(FINN_RES_LIMITS) if limits is None else {**FINN_RES_LIMITS, **limits}
    opts = [spec.cost(p, s) for p, s in spec.options()]
    priced = [(o.ii, _price(o.res, device, lim), o.pe * o.simd, o) for o in opts]
    if budget_cycles is not None:
        ok = [t for t in priced if t[0] <= budget_cycles]
        if ok:
            return min(ok, key=lambda t: (t[1], t[0], t[2]))[3]
    return min(priced, key=lambda t: (t[0], t[1], t[2]))[3]
