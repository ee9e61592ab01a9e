"""Resource estimates (LUT, DSP, BRAM18, URAM) from FINN's published cost model.

Each function states the FINN source it follows. We read those formulas and re-state
them here; where we deviate, the comment says so and why.

* FINN-R: M. Blott, T. B. Preusser, N. J. Fraser, G. Gambardella, K. O'Brien,
  Y. Umuroglu, M. Leeser, K. Vissers, "FINN-R: An End-to-End Deep-Learning Framework
  for Fast Exploration of Quantized Neural Networks", ACM TRETS 11(3), 2018 — the LUT
  model of the MVAU (c0 = 300, c1 = 1.1, multiplier, adder-tree and accumulator
  terms) and the BRAM model of its weight memory, as FINN implements them in
  ``MVAU_hls.lut_estimation`` and ``MVAU.bram_estimation``.
* FINN's RTL MVU (``MVAU_rtl.dsp_estimation``): DSP packing, ``ceil(PE/4) · SIMD``
  DSP48s, ``PE · ceil(SIMD/3)`` DSP58s; FINN counts no LUTs for it.
* FINN ``SpecializeLayers`` (``_determine_impl_style``, ``_mvu_rtl_possible``): which
  MVAU implementation FINN picks (see :func:`mvau_impl`).
* The accumulator width inside the LUT model: ``min(acc width, A2Q bound)`` with the
  data-type bound of I. Colbert, A. Pappalardo, J. Petri-Koenig, "A2Q: Accumulator-
  Aware Quantization with Guaranteed Overflow Avoidance", ICCV 2023 (arXiv:2301.13376).
* SWU: ``ConvolutionInputGenerator_hls.bram_estimation`` / ``lut_estimation``.
* The FINN cost model (``cost_model="finn"``, the default) is FINN's estimators as its
  default build leaves the design (finn-plus 1.6.1; ``tests/hw/fpga/data/
  finn_reference.json`` holds FINN's own values and the test compares every one):
  thresholds inside the MVAU (``standalone_thresholds=False``, so such an MVAU is the
  HLS one and its thresholds cost nothing in the estimate), weights
  ``internal_decoupled`` with ``ram_style=auto`` (the RAMB18 rule at any depth), the
  sliding window ``ConvolutionInputGenerator_rtl`` with LUTRAM line buffers.
  ``cost_model="qatlab"`` is our earlier, physically fuller count (see
  docs/fpga-finn.md): standalone RTL thresholding with its memories and comparators,
  weights of at most 128 words in LUTRAM (counted as LUTs on the RTL MVU as well), the
  HLS sliding window with the deep-line BRAM rule.
* FIFOs: ``StreamingFIFO`` estimates; FIFOs deeper than 256 become BRAM (FINN's
  ``InsertAndSetFIFODepths(max_qsrl_depth=256)``), shallower ones shift registers.
* Activation: FINN's RTL binary-search thresholding (finn-rtllib/thresholding,
  ``Thresholding_rtl.get_pe_mem_geometries``): per PE, stage x = 0..B-1 stores
  (MH/PE) · 2^x thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import FpgaError

# FINN-R's LUT model constants, "parameters from experiments" (MVAU_hls.lut_estimation).
C0_LUT = 300
C1_LUT = 1.1
# FINN's rule for small weight memories: at most 128 words go to LUTs (internal_embedded).
LUTRAM_MAX_DEPTH = 128
# FIFOs deeper than this are built from BRAM (FINN InsertAndSetFIFODepths max_qsrl_depth).
FIFO_MAX_SRL_DEPTH = 256
# "finn": FINN's estimators under its default build; "qatlab": ours (module docstring).
COST_MODELS = ("finn", "qatlab")
# Operand limits of the DSP datapath (activation, weight, accumulator bits) that FINN's
# _mvu_rtl_possible checks (finn.util.basic.get_dsp_datapath_limits).
DSP_DATAPATH_LIMITS = {"DSP58": (24, 27, 58), "DSP48E2": (18, 27, 48), "DSP48E1": (18, 25, 48)}


def check_cost_model(cost_model: str) -> str:
    if cost_model not in COST_MODELS:
        raise FpgaError(f"cost_model must be one of {', '.join(COST_MODELS)}, got {cost_model!r}")
    return cost_model


@dataclass(frozen=True)
class Resources:
    lut: int = 0
    dsp: int = 0
    bram18: int = 0
    uram: int = 0

    def __add__(self, o: "Resources") -> "Resources":
        return Resources(self.lut + o.lut, self.dsp + o.dsp, self.bram18 + o.bram18, self.uram + o.uram)

    def as_dict(self) -> dict[str, int]:
        return {"lut": self.lut, "dsp": self.dsp, "bram18": self.bram18, "uram": self.uram}


# ---- memories ----------------------------------------------------------------------


def bram18_sdp(depth: int, width: int) -> int:
    """RAMB18s for a depth x width memory in simple-dual-port mode (UG573 aspect ratios
    16K x 1, 8K x 2, 4K x 4, 2K x 9, 1K x 18, 512 x 36), FINN's rule as in
    ``MVAU.bram_estimation`` and ``StreamingFIFO.bram_estimation``."""
    if depth <= 0 or width <= 0:
        return 0
    return _bram18_table(depth, width, (9, 18, 36))


def _bram18_table(depth: int, width: int, divisors: tuple[int, int, int]) -> int:
    """FINN's RAMB18 count by aspect ratio; ``divisors`` are the widths it divides by at
    the 2K, 1K and 512-deep ratios (the MVAU's 9/18/36, the VVAU's 8/16/32)."""
    if width == 1:
        return math.ceil(depth / 16384)
    if width == 2:
        return math.ceil(depth / 8192)
    if width <= 4:
        return math.ceil(depth / 4096) * math.ceil(width / 4)
    if width <= 9:
        return math.ceil(depth / 2048) * math.ceil(width / divisors[0])
    if width <= 18 or depth > 512:
        return math.ceil(depth / 1024) * math.ceil(width / divisors[1])
    return math.ceil(depth / 512) * math.ceil(width / divisors[2])


def uram_blocks(depth: int, width: int) -> int:
    """UltraRAMs (4K x 72) for a depth x width memory (``MVAU.uram_estimation``)."""
    if depth <= 0 or width <= 0:
        return 0
    return math.ceil(width / 72) * math.ceil(depth / 4096)


def lutram_luts(depth: int, width: int) -> int:
    """LUTs for a depth x width distributed RAM: ``width · ceil(depth/64)`` (FINN's c2
    term of ``MVAU_hls.lut_estimation``: one 64-bit LUT6 RAM per bit column)."""
    if depth <= 0 or width <= 0:
        return 0
    return width * math.ceil(depth / 64)


def resolve_ram_style(style: str, depth: int) -> str:
    """``auto``: LUTRAM for at most 128 words (FINN's internal_embedded rule), else BRAM."""
    if style == "auto":
        return "distributed" if depth <= LUTRAM_MAX_DEPTH else "block"
    return style


@lru_cache(maxsize=65536)
def memory_resources(style: str, depth: int, width: int) -> Resources:
    """A weight memory in the given (resolved) style."""
    if style == "distributed":
        return Resources(lut=lutram_luts(depth, width))
    if style == "block":
        return Resources(bram18=bram18_sdp(depth, width))
    if style == "ultra":
        return Resources(uram=uram_blocks(depth, width))
    raise ValueError(f"unknown ram style {style!r}")


# ---- MVAU --------------------------------------------------------------------------


def a2q_acc_bits(mw: int, w_bits: int, a_bits: int, a_signed: bool) -> int:
    """The data-type accumulator bound FINN uses inside its LUT model (A2Q, Colbert et
    al. 2023): ``alpha = log2(MW) + W + A - 1 - signed(A)``; ``ceil(alpha + log2(1 +
    2^-alpha) + 1)``."""
    alpha = math.log2(mw) + w_bits + a_bits - 1 - int(a_signed)
    return int(math.ceil(alpha + math.log2(1 + 2.0 ** (-alpha)) + 1))


def rtl_mvu_possible(
    w_bits: int,
    a_bits: int,
    *,
    w_signed: bool = True,
    a_signed: bool = False,
    narrow_weights: bool = False,
    dsp_block: str = "DSP48E2",
) -> bool:
    """Whether FINN's SpecializeLayers would build the DSP-packed RTL MVU.

    ``_determine_impl_style``: both operands at least 4 bits wide; ``_mvu_rtl_possible``:
    signed weights of at most 8 bits, inputs of at most 8 bits (or 9 signed), and on a
    DSP48E1 (7-series) only narrow-range weights (no -2^(W-1)). FINN also requires the
    activation to be a separate thresholding layer, which is how we always model it.
    """
    if a_bits < 4 or w_bits < 4:
        return False
    if not w_signed or w_bits > 8:
        return False
    if not (a_bits <= 8 or (a_bits == 9 and a_signed)):
        return False
    if dsp_block == "DSP48E1" and not narrow_weights:
        return False
    return True


def finn_rtl_mvu_possible(
    w_bits: int,
    a_bits: int,
    acc_bits: int,
    *,
    has_activation: bool,
    w_signed: bool = True,
    a_signed: bool = False,
    narrow_weights: bool = False,
    dsp_block: str = "DSP48E2",
) -> bool:
    """finn-plus ``SpecializeLayers`` for an MVAU: ``_determine_impl_style`` wants both
    operands at least 4 bits wide; ``_mvu_rtl_possible`` no thresholds inside the MVAU
    (under the default ``standalone_thresholds=False`` any activation stays inside),
    signed weights (narrow-range on a DSP48E1), and operands within the DSP datapath:
    ``A - signed(A) < act limit``, ``W <= weight limit``, accumulator ``<= acc limit``."""
    if has_activation or a_bits < 4 or w_bits < 4 or not w_signed:
        return False
    if dsp_block == "DSP48E1" and not narrow_weights:
        return False
    max_act, max_w, max_acc = DSP_DATAPATH_LIMITS[dsp_block]
    return (a_bits - int(a_signed)) < max_act and w_bits <= max_w and acc_bits <= max_acc


def mvau_impl(
    w_bits: int,
    a_bits: int,
    res_type: str = "auto",
    *,
    w_signed: bool = True,
    a_signed: bool = False,
    narrow_weights: bool = False,
    dsp_block: str = "DSP48E2",
    cost_model: str = "qatlab",
    has_activation: bool = False,
    acc_bits: int = 0,
) -> str:
    """``rtl`` (DSP-packed RTL MVU), ``hls-lut`` (HLS MVAU, LUT multipliers) or ``hls-dsp``.

    ``auto`` is FINN's choice: the RTL MVU where possible, else the HLS MVAU whose
    ``resType=auto`` estimate counts LUT multipliers. ``dsp`` asks for DSPs: the RTL
    MVU where possible, else the HLS MVAU with ``resType=dsp``. ``lut`` forces LUTs.
    """
    if res_type == "lut":
        return "hls-lut"
    if cost_model == "finn":
        possible = finn_rtl_mvu_possible(
            w_bits,
            a_bits,
            acc_bits,
            has_activation=has_activation,
            w_signed=w_signed,
            a_signed=a_signed,
            narrow_weights=narrow_weights,
            dsp_block=dsp_block,
        )
    else:
        possible = rtl_mvu_possible(
            w_bits, a_bits, w_signed=w_signed, a_signed=a_signed, narrow_weights=narrow_weights, dsp_block=dsp_block
        )
    if possible:
        return "rtl"
    return "hls-dsp" if res_type == "dsp" else "hls-lut"


def mvau_hls_luts(pe: int, simd: int, w_bits: int, a_bits: int, acc_bits: int, mult_in_luts: bool) -> int:
    """FINN-R's MVAU LUT model without thresholds and weight memory (``noActivation``;
    the c2 memory term is :func:`memory_resources`):
    ``c0 + c1 · PE · (mult + addertree + acc)`` with
    ``mult = SIMD · (2·ceil((W+A)/6) - 1) · (W+A)`` (0 with DSP multipliers),
    ``addertree = (W+A) · (2·SIMD - 1)`` and ``acc = acc_bits``."""
    wa = w_bits + a_bits
    mult = simd * (2 * math.ceil(wa / 6) - 1) * wa if mult_in_luts else 0
    addertree = wa * (2 * simd - 1)
    return int(C0_LUT + C1_LUT * (pe * (mult + addertree + acc_bits)))


def mvau_hls_dsps(pe: int, simd: int, w_bits: int, a_bits: int) -> int:
    """``PE · SIMD · ceil((W+A)/48)`` (``MVAU_hls.dsp_estimation`` with resType=dsp)."""
    return pe * simd * math.ceil((w_bits + a_bits) / 48)


def mvau_rtl_dsps(pe: int, simd: int, dsp_block: str) -> int:
    """``MVAU_rtl.dsp_estimation``: DSP58 ``PE · ceil(SIMD/3)``; DSP48 ``ceil(PE/4) · SIMD``."""
    if dsp_block == "DSP58":
        return pe * math.ceil(simd / 3)
    return math.ceil(pe / 4) * simd


# ---- activation (thresholding) ----------------------------------------------------


@lru_cache(maxsize=65536)
def thresholding_resources(pe: int, mh: int, out_bits: int, thr_bits: int) -> Resources:
    """FINN's RTL binary-search thresholding with PE lanes: stage x (0..B-1) of each
    lane stores (MH/PE)·2^x thresholds of ``thr_bits`` (``get_pe_mem_geometries``).

    FINN picks each stage's memory primitive by efficiency; we use the same rule as for
    weights (LUTRAM up to 128 words, else RAMB18). FINN's estimate counts memory only;
    we add one ``thr_bits``-wide comparator per stage and lane (our addition).
    """
    cf = mh // pe
    res = Resources(lut=pe * out_bits * thr_bits)
    for x in range(out_bits):
        depth = cf * 2**x
        style = resolve_ram_style("auto", depth)
        res = res + Resources(**{k: pe * v for k, v in memory_resources(style, depth, thr_bits).as_dict().items()})
    return res


# ---- sliding window, downsampler, FIFOs ------------------------------------------


def swu_bram18(ifm_w: int, channels: int, k: int, stride: int, swu_simd: int, a_bits: int) -> int:
    """``ConvolutionInputGenerator_hls.bram_estimation`` (2D, ram_style auto/block):
    ``(k + stride) · ceil(SIMD·A / ram_width) · depth_mul`` where the RAMB18 aspect
    ratio is picked from ``depth = ifm_w · C/SIMD`` (<= 512: 36 wide, ... > 8192: 1).

    FINN writes ``depth_mul = ceil(ifm_dim · C/SIMD / depth)`` with that same depth,
    which is always 1; we keep it 1 except past 16384 words, where one RAMB18 cannot
    hold a row and FINN's formula would be physically short (our only deviation).
    """
    depth = ifm_w * channels // swu_simd
    for limit, width in ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2)):
        if depth <= limit:
            ram_width = width
            break
    else:
        ram_width = 1
    depth_mul = max(1, math.ceil(depth / 16384))
    return int((k + stride) * math.ceil(swu_simd * a_bits / ram_width) * depth_mul)


def swu_luts() -> int:
    """``ConvolutionInputGenerator_hls.lut_estimation`` with BRAM line buffers: 300."""
    return 300


def fifo_resources(depth_words: int, width_bits: int) -> Resources:
    """``StreamingFIFO`` estimates: up to 256 words an SRL FIFO (``impl_style=rtl``):
    ``2·ceil(log2 depth) + ceil(depth/32)·ceil(W/2)`` LUTs; deeper, a BRAM FIFO
    (``vivado``, ram_style block): the RAMB18 rule plus the address LUTs."""
    if depth_words <= 0 or width_bits <= 0:
        return Resources()
    address = 2 * math.ceil(math.log2(depth_words)) if depth_words > 1 else 0
    if depth_words <= FIFO_MAX_SRL_DEPTH:
        return Resources(lut=address + math.ceil(depth_words / 32) * math.ceil(width_bits / 2))
    return Resources(lut=address, bram18=bram18_sdp(depth_words, width_bits))


# ---- one layer --------------------------------------------------------------------


@dataclass
class LayerCost:
    """A layer's resources, with the parts kept apart so a report can explain them."""

    impl: str  # rtl | hls-lut | hls-dsp
    ram_style: str  # resolved weight-memory style
    wmem_depth: int
    wmem_width: int
    compute: Resources = field(default_factory=Resources)
    weights: Resources = field(default_factory=Resources)
    activation: Resources = field(default_factory=Resources)
    window: Resources = field(default_factory=Resources)

    @property
    def total(self) -> Resources:
        return self.compute + self.weights + self.activation + self.window


def finn_weight_memory(style: str, depth: int, width: int, impl: str) -> Resources:
    """FINN's estimate of an ``internal_decoupled`` weight memory (``MVAU.bram_estimation``,
    ``uram_estimation`` and the c2 term of ``MVAU_hls.lut_estimation``): ``auto`` and
    ``block`` by the RAMB18 rule at any depth, ``ultra`` by the URAM rule,
    ``distributed`` as ``width · ceil(depth/64)`` LUTs on the HLS MVAU and nothing on
    the RTL one (whose ``lut_estimation`` is 0)."""
    if style in ("auto", "block"):
        return Resources(bram18=bram18_sdp(depth, width))
    if style == "ultra":
        return Resources(uram=uram_blocks(depth, width))
    if style == "distributed":
        return Resources(lut=lutram_luts(depth, width) if impl != "rtl" else 0)
    raise ValueError(f"unknown ram style {style!r}")


def mvau_cost(
    mh: int,
    mw: int,
    pe: int,
    simd: int,
    w_bits: int,
    a_bits: int,
    acc_bits: int,
    out_bits: int | None,
    *,
    res_type: str = "auto",
    ram_style: str = "auto",
    w_signed: bool = True,
    a_signed: bool = False,
    narrow_weights: bool = False,
    dsp_block: str = "DSP48E2",
    cost_model: str = "qatlab",
) -> LayerCost:
    """MVAU + weight memory + thresholding for one layer (no input unit).

    ``cost_model="finn"``: the MVAU FINN's default build makes (thresholds inside, so
    an activation means the HLS MVAU; ``internal_decoupled`` weights) and FINN's
    estimate of it. ``"qatlab"``: standalone thresholds and every memory counted."""
    check_cost_model(cost_model)
    impl = mvau_impl(
        w_bits,
        a_bits,
        res_type,
        w_signed=w_signed,
        a_signed=a_signed,
        narrow_weights=narrow_weights,
        dsp_block=dsp_block,
        cost_model=cost_model,
        has_activation=out_bits is not None,
        acc_bits=acc_bits,
    )
    depth = mh * mw // (pe * simd)
    width = pe * simd * w_bits
    lut_acc = min(acc_bits, a2q_acc_bits(mw, w_bits, a_bits, a_signed))
    if impl == "rtl":
        compute = Resources(dsp=mvau_rtl_dsps(pe, simd, dsp_block))  # FINN counts no LUTs here
    elif impl == "hls-dsp":
        compute = Resources(lut=mvau_hls_luts(pe, simd, w_bits, a_bits, lut_acc, False), dsp=mvau_hls_dsps(pe, simd, w_bits, a_bits))
    else:
        compute = Resources(lut=mvau_hls_luts(pe, simd, w_bits, a_bits, lut_acc, True))
    if cost_model == "finn":
        # FINN's estimate of embedded thresholds (ram_style_thresholds=auto) is nothing.
        style = "block" if ram_style == "auto" else ram_style
        return LayerCost(impl, style, depth, width, compute, finn_weight_memory(ram_style, depth, width, impl), Resources())
    style = resolve_ram_style(ram_style, depth)
    act = thresholding_resources(pe, mh, out_bits, acc_bits) if out_bits else Resources()
    return LayerCost(impl, style, depth, width, compute, memory_resources(style, depth, width), act)


# ---- FINN's other estimators (cost_model="finn") -----------------------------------

# Memory primitives FINN's RTL thresholding chooses among (finn.util.memutil, Versal
# table, used for every part): name -> (width, depth); the first of least waste wins.
MEM_PRIMITIVES = (
    ("URAM_72x4096", 72, 4096),
    ("URAM_36x8192", 36, 8192),
    ("URAM_18x16384", 18, 16384),
    ("URAM_9x32768", 9, 32768),
    ("BRAM18_36x512", 36, 512),
    ("BRAM18_18x1024", 18, 1024),
    ("BRAM18_9x2048", 9, 2048),
    ("LUTRAM", 1, 64),
)


def least_waste_primitive(width: int, depth: int) -> tuple[str, int]:
    """``get_memutil_alternatives(...)[0]``: the primitive (and how many) that wastes the
    fewest bits for a width x depth memory; ties go to the earlier entry."""
    best: tuple[int, str, int] | None = None
    for name, pw, pd in MEM_PRIMITIVES:
        count = math.ceil(width / pw) * math.ceil(depth / pd)
        waste = count * pw * pd - width * depth
        if best is None or waste < best[0]:
            best = (waste, name, count)
    assert best is not None
    return best[1], best[2]


def finn_thresholding_resources(pe: int, channels: int, out_bits: int, thr_bits: int) -> Resources:
    """``Thresholding_rtl`` estimate: per PE, stage x = 0..B-1 a ``thr_bits`` x
    ``(C/PE)·2^x`` memory in its least-waste primitive (LUTRAM counts as LUTs); no
    comparators, no DSP."""
    res = Resources()
    cf = channels // pe
    for x in range(out_bits):
        name, count = least_waste_primitive(thr_bits, cf * 2**x)
        if name.startswith("BRAM"):
            res = res + Resources(bram18=pe * count)
        elif name.startswith("URAM"):
            res = res + Resources(uram=pe * count)
        else:
            res = res + Resources(lut=pe * count)
    return res


def swu_rtl_buffer(
    ifm_w: int, channels: int, k_h: int, k_w: int, stride_h: int, stride_w: int, simd: int, parallel: bool
) -> tuple[int, int]:
    """``ConvolutionInputGenerator_rtl.get_buffer_depth`` and the (depth, count) its
    memory estimates use (dilation 1): the default style one buffer of
    ``((k_h-1)·W + k_w)·C/SIMD`` words plus a stride allowance; the parallel window
    ``k_h - 1`` line buffers of ``W - k_w`` words for the estimates (the LUT estimate
    takes ``(k_h-1)·W + k_w-1)·C/SIMD + 2``)."""
    cf = channels // simd
    if not parallel:
        kk = k_h * k_w
        depth = ((k_h - 1) * ifm_w + k_w) * cf + max(0, (stride_w - 1 - kk) * cf) + max(0, ((stride_h - 1) * ifm_w - kk) * cf)
        return depth, 1
    return ifm_w - k_w, k_h - 1


def _ramb18_width_for(depth: int) -> int:
    for limit, width in ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2)):
        if depth <= limit:
            return width
    return 1


def swu_rtl_resources(
    ifm_h: int,
    ifm_w: int,
    channels: int,
    k_h: int,
    k_w: int,
    stride_h: int,
    stride_w: int,
    simd: int,
    a_bits: int,
    parallel: bool,
    ram_style: str = "distributed",
) -> Resources:
    """``ConvolutionInputGenerator_rtl`` ``lut/bram/uram_estimation`` (FINN's default
    ``ram_style`` is distributed): LUTs ``300 + width·ceil(buffer depth/38)`` for
    LUTRAM buffers; RAMB18s by the aspect-ratio rule with cascades past 16K words (the
    remainder at its own ratio); URAMs ``ceil(depth/4096)·ceil(width/72)`` per buffer."""
    width = simd * a_bits
    cf = channels // simd
    parallel = parallel or (k_h == 1 and k_w == 1)  # FINN's select_impl_style
    if parallel:
        full_depth = ((k_h - 1) * ifm_w + k_w - 1) * cf + 2
    else:
        full_depth = swu_rtl_buffer(ifm_w, channels, k_h, k_w, stride_h, stride_w, simd, False)[0]
    lut = 300 + (width * math.ceil(full_depth / 38) if ram_style == "distributed" else 0)
    if ram_style == "distributed" or (parallel and (ifm_h == 1 or ifm_w == 1)):
        return Resources(lut=lut)
    depth, count = swu_rtl_buffer(ifm_w, channels, k_h, k_w, stride_h, stride_w, simd, parallel)
    if ram_style == "ultra":
        return Resources(lut=lut, uram=math.ceil(depth / 4096) * math.ceil(width / 72) * count)
    cascade_w = math.ceil(width / _ramb18_width_for(depth))
    savings = 0
    if depth > 16384:
        savings = cascade_w - math.ceil(width / _ramb18_width_for(depth % 16384))
    return Resources(lut=lut, bram18=(math.ceil(depth / 16384) * cascade_w - savings) * count)


def channelwise_op_luts(pe: int, channels: int, a_bits: int) -> int:
    """``ChannelwiseOp_hls.lut_estimation`` (Xilinx FINN v0.10; ram_style distributed, its
    default): an ``A``-bit operator per PE plus the parameters in LUTRAM,
    ``P·A·ceil(TMEM/64)`` with ``TMEM = C/PE`` (none for a single parameter per PE)."""
    tmem = channels // pe
    return a_bits * pe + (pe * a_bits * math.ceil(tmem / 64) if tmem > 1 else 0)


def vvau_luts(
    pe: int,
    simd: int,
    w_bits: int,
    a_bits: int,
    acc_bits: int,
    taps: int,
    a_signed: bool,
    out_bits: int | None,
    channels: int,
    wmem_luts: int = 0,
) -> int:
    """``VVAU_hls.lut_estimation``: FINN-R's model with the A2Q bound over the kernel's
    taps, plus, with thresholds inside, ``(2^B - 1)·acc·(C/PE)/64`` threshold LUTs and
    ``(2^B - 1)·acc`` comparator LUTs per PE (not rounded up: FINN's formula)."""
    wa = w_bits + a_bits
    mult = simd * (2 * math.ceil(wa / 6) - 1) * wa
    adder = wa * (2 * simd - 1)
    acc = min(acc_bits, a2q_acc_bits(taps, w_bits, a_bits, a_signed))
    thr = comp = 0.0
    if out_bits is not None:
        steps = 2**out_bits - 1
        thr = steps * acc * (channels // pe) / 64
        comp = steps * acc
    return int(C0_LUT + C1_LUT * (pe * (mult + adder + acc + thr + comp)) + wmem_luts)


def vvau_bram18(depth: int, width: int, style: str = "auto") -> int:
    """``VVAU.bram_estimation`` (internal_decoupled): none in LUTRAM or URAM, none for at
    most 128 words with ``auto``; else RAMB18s by FINN's VVAU table, whose width
    divisors (8, 16, 32) differ from the MVAU's (9, 18, 36)."""
    if style in ("distributed", "ultra") or (style == "auto" and depth <= LUTRAM_MAX_DEPTH):
        return 0
    return _bram18_table(depth, width, (8, 16, 32))


def finn_lookup_bram18(entries: int, out_bits: int) -> int:
    """``Lookup.bram_estimation`` (finn-plus; ``internal_embedded``, ``ram_style=block``,
    its default): ``ceil(width/16) · ceil(entries/1024)`` RAMB18s for one table of
    ``entries`` words as wide as the output stream (no PE: one element per cycle)."""
    if entries < 1 or out_bits < 1:
        raise FpgaError(f"a lookup table needs entries and output bits >= 1, got {entries} and {out_bits}")
    return math.ceil(out_bits / 16) * math.ceil(entries / 1024)
