"""Per-layer facts the cost model needs beyond the geometry: bit widths, signedness,
accumulator width, output code width, weights' range — and the layer's cost under a
folding. Shared by :mod:`.analytic` and :mod:`.search`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from qatlab.hw.workload import Layer

from .accumulator import AccumulatorBits, accumulator_bits
from .cycles import layer_cycles
from .devices import Device
from .errors import ParamsError
from .folding import LayerFolding
from .geometry import Geometry, geometry
from .reference import IntLayer
from .resources import LayerCost, Resources, mvau_cost, swu_bram18, swu_luts

ParamLike = IntLayer | np.ndarray | None


@dataclass(frozen=True)
class LayerSpec:
    layer: Layer
    geom: Geometry
    w_bits: int
    a_bits: int
    a_signed: bool
    out_bits: int | None  # output code width; None: no activation (raw accumulators)
    acc: AccumulatorBits
    narrow_weights: bool  # no weight equals -2^(W-1) (known only from the weights)

    @property
    def name(self) -> str:
        return self.geom.name

    def window_cost(self, swu_simd: int | None) -> Resources:
        """The sliding-window unit's resources (a DownSampler has no FINN estimate: 0)."""
        g = self.geom
        if g.unit != "swu" or swu_simd is None:
            return Resources()
        return Resources(lut=swu_luts(), bram18=swu_bram18(g.ifm_w, g.channels, g.k_h, g.stride_h, swu_simd, self.a_bits))

    def mvau_cost(self, f: LayerFolding, device: Device) -> LayerCost:
        g = self.geom
        return mvau_cost(
            g.mh,
            g.mw,
            f.pe,
            f.simd,
            self.w_bits,
            self.a_bits,
            self.acc.used,
            self.out_bits,
            res_type=f.res_type,
            ram_style=f.ram_style,
            a_signed=self.a_signed,
            narrow_weights=self.narrow_weights,
            dsp_block=device.dsp_block,
        )

    def cost(self, f: LayerFolding, device: Device) -> LayerCost:
        c = self.mvau_cost(f, device)
        c.window = self.window_cost(f.swu_simd)
        return c

    def cycles(self, f: LayerFolding) -> tuple[int, int, int]:
        return layer_cycles(self.geom, f.pe, f.simd, int(f.swu_simd or 1))

    @property
    def line_buffer_bits(self) -> int:
        """FINN's SWU buffer: k_h + stride rows of the input (0 without a window)."""
        g = self.geom
        if g.unit != "swu":
            return 0
        return (g.k_h + g.stride_h) * g.ifm_w * g.channels * self.a_bits


def _weights_of(p: ParamLike) -> np.ndarray | None:
    if p is None:
        return None
    if isinstance(p, IntLayer):
        return np.asarray(p.weights)
    return np.asarray(p)


def layer_specs(
    layers: Sequence[Layer],
    params: Sequence[ParamLike] | None = None,
    *,
    signed_input: bool = False,
    acc_bits: int | Sequence[int | None] | None = None,
) -> list[LayerSpec]:
    """Specs of every layer. ``params``: per layer an IntLayer, a weight array [MH, MW]
    or None. Without an IntLayer, a layer's inputs are unsigned (post-ReLU) except the
    first layer's with ``signed_input``, its output codes are the next layer's
    ``a_bits`` wide, and the last layer outputs raw accumulators (FINN's noActivation)."""
    if not layers:
        raise ParamsError("no layers")
    if params is not None and len(params) != len(layers):
        raise ParamsError(f"{len(layers)} layers but {len(params)} parameter entries")
    overrides = list(acc_bits) if isinstance(acc_bits, (list, tuple)) else [acc_bits] * len(layers)
    if len(overrides) != len(layers):
        raise ParamsError(f"acc_bits: {len(layers)} layers but {len(overrides)} widths")
    specs = []
    for i, lay in enumerate(layers):
        g = geometry(lay)
        p = params[i] if params is not None else None
        w = _weights_of(p)
        if w is not None:
            if not np.issubdtype(w.dtype, np.integer):
                raise ParamsError(f"layer {lay.name!r}: field 'weights' must be integers, got {w.dtype}")
            if w.shape != (g.mh, g.mw):
                raise ParamsError(f"layer {lay.name!r}: field 'weights' has shape {w.shape}, expected [MH, MW] = {(g.mh, g.mw)}")
        if isinstance(p, IntLayer):
            a_signed = p.in_signed
            out_bits = p.out_bits
        else:
            a_signed = signed_input if i == 0 else False
            out_bits = layers[i + 1].a_bits if i + 1 < len(layers) else None
        ov = overrides[i]
        if ov is not None and (isinstance(ov, bool) or not isinstance(ov, int) or ov < 2):
            raise ParamsError(f"layer {lay.name!r}: acc_bits must be an integer >= 2, got {ov!r}")
        acc = accumulator_bits(g.mw, lay.w_bits, lay.a_bits, weights=w, a_signed=a_signed, override=ov)
        narrow_w = bool(w is not None and (w.size == 0 or int(w.min()) > -(1 << (lay.w_bits - 1))))
        specs.append(LayerSpec(lay, g, lay.w_bits, lay.a_bits, a_signed, out_bits, acc, narrow_w))
    return specs
