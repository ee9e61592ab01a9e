"""Integer semantics of a layer list, in plain numpy: the reference the stepped
simulation must match bit for bit.

One layer, on one frame of input codes ``x`` (HWC order, zero point 0 in the datapath):

1. window: im2col vectors in (kernel row, kernel column, channel) order (SWU), every
   stride-th pixel (DownSampler) or the input as is (1x1 / GEMM);
2. accumulate: ``acc = x_col @ W^T`` with integer weights ``W [MH, MW]`` (exact int64,
   or a narrower wrapping/saturating accumulator, see :mod:`.accumulator`);
3. activate: ``y = clamp(rint((acc + bias) · M) + z, qmin, qmax)`` per output channel
   (:mod:`.activation`), or no activation (``multiplier=None``): ``y = acc + bias``.

The output stream (pixels in raster order, channels innermost) is the next layer's
input stream. A converter from an IntModel folds any input zero point into the bias
(``Σ w·(x − z) = Σ w·x − z·Σ w``), as FINN's streamlining does, and orders weight
columns (kh, kw, c): ``W = weight_OIHW.transpose(0, 2, 3, 1).reshape(O, -1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from qatlab.hw.workload import Layer

from .accumulator import accumulate, accumulator_bits, int_range
from .activation import requantize
from .errors import ChainError, ParamsError
from .geometry import Geometry, chained, geometry


@dataclass(frozen=True, eq=False)
class IntLayer:
    """The integer parameters of one layer.

    ``weights [MH, MW]`` integers within the layer's ``w_bits`` (signed); ``bias [MH]``
    integers added before requantization; ``multiplier [MH]`` float64 >= 0 (None: the
    layer outputs ``acc + bias`` unquantized, FINN's ``noActivation``); output codes
    ``clamp(... + zero_point, qmin, qmax)``; ``in_signed``: whether the input codes of
    this layer are signed (``a_bits`` of the Layer gives their width).
    """

    weights: np.ndarray
    bias: np.ndarray | None = None
    multiplier: np.ndarray | None = None
    zero_point: int = 0
    qmin: int = 0
    qmax: int = 255
    in_signed: bool = False

    @property
    def has_activation(self) -> bool:
        return self.multiplier is not None

    @property
    def out_bits(self) -> int | None:
        """Width of the output codes (None without activation)."""
        if self.multiplier is None:
            return None
        signed = self.qmin < 0
        lo, hi = self.qmin, self.qmax
        for b in range(1, 33):
            rlo, rhi = int_range(b, signed)
            if rlo <= lo and hi <= rhi:
                return b
        return 32


def _is_int_array(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.integer)


def validate_params(layers: Sequence[Layer], params: Sequence[IntLayer]) -> list[Geometry]:
    """Check shapes, integer types and code ranges; raise ParamsError naming layer and field."""
    if len(layers) != len(params):
        raise ParamsError(f"{len(layers)} layers but {len(params)} parameter sets")
    geoms = [geometry(lay) for lay in layers]
    for i, (lay, g, p) in enumerate(zip(layers, geoms, params)):
        w = np.asarray(p.weights)
        if not _is_int_array(w):
            raise ParamsError(f"layer {lay.name!r}: field 'weights' must be an integer array, got {w.dtype}")
        if w.shape != (g.mh, g.mw):
            raise ParamsError(f"layer {lay.name!r}: field 'weights' has shape {w.shape}, expected [MH, MW] = {(g.mh, g.mw)}")
        wl, wh = int_range(lay.w_bits, True)
        if w.size and (int(w.min()) < wl or int(w.max()) > wh):
            raise ParamsError(
                f"layer {lay.name!r}: field 'weights' spans [{int(w.min())}, {int(w.max())}], outside {lay.w_bits}-bit signed [{wl}, {wh}]"
            )
        if p.bias is not None:
            b = np.asarray(p.bias)
            if not _is_int_array(b) or b.shape != (g.mh,):
                raise ParamsError(f"layer {lay.name!r}: field 'bias' must be an integer array of shape ({g.mh},)")
        if p.multiplier is not None:
            m = np.asarray(p.multiplier, dtype=np.float64)
            if m.shape != (g.mh,):
                raise ParamsError(f"layer {lay.name!r}: field 'multiplier' must have shape ({g.mh},), got {m.shape}")
            if np.any(~np.isfinite(m)) or np.any(m < 0):
                raise ParamsError(f"layer {lay.name!r}: field 'multiplier' must be finite and non-negative")
            if not p.qmin < p.qmax:
                raise ParamsError(f"layer {lay.name!r}: fields 'qmin' < 'qmax' required, got {p.qmin}, {p.qmax}")
        if i + 1 < len(layers):
            nxt, pn = layers[i + 1], params[i + 1]
            if p.multiplier is None:
                raise ParamsError(
                    f"layer {lay.name!r}: field 'multiplier' is None (raw accumulators out) but layer "
                    f"{nxt.name!r} follows; only the last layer may have no activation"
                )
            lo, hi = int_range(nxt.a_bits, pn.in_signed)
            if p.qmin < lo or p.qmax > hi:
                raise ParamsError(
                    f"layer {lay.name!r}: output codes [qmin, qmax] = [{p.qmin}, {p.qmax}] do not fit layer "
                    f"{nxt.name!r}'s {nxt.a_bits}-bit {'signed' if pn.in_signed else 'unsigned'} inputs [{lo}, {hi}]"
                )
    return geoms


def check_chain(geoms: Sequence[Geometry]) -> None:
    """Consecutive layers must stream into each other (same element count)."""
    for a, b in zip(geoms, geoms[1:]):
        if not chained(a, b):
            raise ChainError(
                f"layer {a.name!r} outputs {a.out_elems} elements per frame "
                f"({a.ofm_h}x{a.ofm_w}x{a.mh}) but layer {b.name!r} reads {b.in_elems} "
                f"({b.ifm_h}x{b.ifm_w}x{b.channels}): the topology leaves out a pooling or padding "
                f"step between them, which a functional simulation needs"
            )


def windows(x: np.ndarray, g: Geometry) -> np.ndarray:
    """The MVAU's input vectors [pixels, MW] for one frame of codes (any shape, HWC order)."""
    x = np.asarray(x, dtype=np.int64).reshape(g.batch, g.ifm_h, g.ifm_w, g.channels)
    if g.unit == "none":
        return x.reshape(g.pixels, g.mw)
    if g.unit == "ds":
        sel = x[:, :: g.stride_h, :: g.stride_w][:, : g.ofm_h, : g.ofm_w]
        return sel.reshape(g.pixels, g.mw)
    v = np.lib.stride_tricks.sliding_window_view(x, (g.k_h, g.k_w), axis=(1, 2))  # [B, H', W', C, kh, kw]
    v = v[:, :: g.stride_h, :: g.stride_w][:, : g.ofm_h, : g.ofm_w]
    return np.ascontiguousarray(v.transpose(0, 1, 2, 4, 5, 3)).reshape(g.pixels, g.mw)


def acc_is_signed(layer: Layer, p: IntLayer) -> bool:
    """Whether the layer's accumulator is two's complement: some product can be negative."""
    g = geometry(layer)
    return accumulator_bits(g.mw, layer.w_bits, layer.a_bits, weights=p.weights, a_signed=p.in_signed).signed


def layer_forward(
    x: np.ndarray,
    g: Geometry,
    p: IntLayer,
    *,
    simd: int | None = None,
    acc_bits: int | None = None,
    acc_mode: str = "wrap",
    acc_signed: bool = True,
) -> np.ndarray:
    """One layer on one frame: [pixels, MH] int64 output codes (or accumulators)."""
    acc = accumulate(windows(x, g), p.weights, simd=simd, bits=acc_bits, mode=acc_mode, signed=acc_signed)
    if p.multiplier is None:
        return acc if p.bias is None else acc + np.asarray(p.bias, dtype=np.int64)
    return requantize(acc, p.multiplier, p.bias, p.zero_point, p.qmin, p.qmax)


def reference_forward(
    layers: Sequence[Layer],
    params: Sequence[IntLayer],
    x: np.ndarray,
    *,
    simd: Sequence[int] | None = None,
    acc_bits: Sequence[int | None] | int | None = None,
    acc_mode: str = "wrap",
    acc_signed: Sequence[bool] | bool | None = None,
) -> list[np.ndarray]:
    """All layers on one frame ``x`` (the first layer's input codes, HWC order).

    Returns each layer's output [pixels, MH]. ``acc_bits`` (one width for all layers,
    or one per layer) simulates narrower accumulators; saturation needs ``simd``. A
    narrow accumulator is two's complement unless no product of the layer can be
    negative (FINN's rule, ``acc_signed=None``), as in the stepped simulation.
    """
    geoms = validate_params(layers, params)
    check_chain(geoms)
    x = np.asarray(x)
    if x.size != geoms[0].in_elems:
        raise ValueError(f"input has {x.size} elements; layer {geoms[0].name!r} reads {geoms[0].in_elems} per frame")
    lo, hi = int_range(layers[0].a_bits, params[0].in_signed)
    if x.size and (int(x.min()) < lo or int(x.max()) > hi):
        raise ValueError(f"input codes span [{int(x.min())}, {int(x.max())}], outside layer {layers[0].name!r}'s [{lo}, {hi}]")
    bits = list(acc_bits) if isinstance(acc_bits, (list, tuple)) else [acc_bits] * len(layers)
    if acc_signed is None:
        sgn = [acc_is_signed(lay, p) for lay, p in zip(layers, params)]
    else:
        sgn = list(acc_signed) if isinstance(acc_signed, (list, tuple)) else [acc_signed] * len(layers)
    outs = []
    for i, (g, p) in enumerate(zip(geoms, params)):
        s = simd[i] if simd is not None else None
        x = layer_forward(x, g, p, simd=s, acc_bits=bits[i], acc_mode=acc_mode, acc_signed=sgn[i])
        outs.append(x)
    return outs
