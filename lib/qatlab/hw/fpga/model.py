"""Per-layer facts the cost model needs beyond the geometry: bit widths, signedness,
accumulator width, output code width, weights' range — and the layer's cost under a
folding. Shared by :mod:`.analytic` and :mod:`.search`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from qatlab.hw.workload import Layer

from .accumulator import AccumulatorBits, accumulator_bits
from .cycles import ds_cycles, layer_cycles, mvau_cycles, swu_cycles_rtl
from .devices import Device
from .errors import ParamsError
from .folding import LayerFolding
from .geometry import Geometry, geometry
from .reference import IntLayer
from .resources import LayerCost, Resources, check_cost_model, mvau_cost, swu_bram18, swu_luts, swu_rtl_resources

# FINN's RTL sliding window keeps its lines in LUTRAM unless told otherwise.
SWU_RTL_RAM_STYLE = "distributed"

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
    cost_model: str = "finn"  # finn | qatlab (see :mod:`.resources`)

    @property
    def name(self) -> str:
        return self.geom.name

    @property
    def padding(self) -> tuple[int, int]:
        """The conv's zero padding (rows, columns per side) when the layer came from an
        IntModel op (``meta["padding"]``); a topology's layers carry none."""
        ph, pw = self.layer.meta.get("padding", (0, 0))
        return int(ph), int(pw)

    @property
    def padded(self) -> bool:
        """Whether FINN puts an ``FMPadding`` in front of the window (``InferConvInpGen``
        does for every padded ``Im2Col``; a 1x1 conv is never padded in the zoo)."""
        return self.geom.unit == "swu" and self.padding != (0, 0)

    def pad_cycles(self, swu_simd: int | None) -> int:
        """FINN ``FMPadding.get_exp_cycles``: the padded image, ``H_pad·W_pad·C/SIMD``
        (the geometry's input is already the padded one). Its SIMD is the window's: it
        then never outpaces the window, so it costs latency, not throughput."""
        if not self.padded:
            return 0
        g = self.geom
        return g.batch * g.ifm_h * g.ifm_w * (g.channels // int(swu_simd or 1))

    @property
    def rtl_window(self) -> bool:
        """Whether the sliding window is FINN's RTL one (else the HLS one)."""
        return self.cost_model == "finn"

    def window_cost(self, swu_simd: int | None, parallel: bool | None = False) -> Resources:
        """The resources of the unit feeding the MVAU: FINN's RTL window (FINN cost model)
        or the HLS one; the HLS DownSampler has no FINN estimate: 0."""
        g = self.geom
        if g.unit == "ds" and self.rtl_window and swu_simd is not None:
            # finn-plus has no DownSampler: a 1x1 window of the RTL generator drops the pixels.
            return swu_rtl_resources(g.ifm_h, g.ifm_w, g.channels, 1, 1, g.stride_h, g.stride_w, swu_simd, self.a_bits, True)
        if g.unit != "swu" or swu_simd is None:
            return Resources()
        if self.rtl_window:
            return swu_rtl_resources(
                g.ifm_h, g.ifm_w, g.channels, g.k_h, g.k_w, g.stride_h, g.stride_w, swu_simd, self.a_bits, bool(parallel), SWU_RTL_RAM_STYLE
            )
        return Resources(lut=swu_luts(), bram18=swu_bram18(g.ifm_w, g.channels, g.k_h, g.stride_h, swu_simd, self.a_bits))

    def window_cycles(self, swu_simd: int, parallel: bool | None = False) -> int:
        """Cycles per frame of the unit feeding the MVAU (0 without one)."""
        g = self.geom
        if g.unit == "ds" and self.rtl_window:
            return ds_cycles(g, swu_simd) + 2 * g.batch  # the RTL 1x1 window: H·W·C/SIMD + 2
        if g.unit == "ds":
            return ds_cycles(g, swu_simd)
        if g.unit == "swu" and self.rtl_window:
            return swu_cycles_rtl(g, swu_simd, bool(parallel))
        return layer_cycles(g, 1, 1, swu_simd)[1]

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
            cost_model=self.cost_model,
        )

    def cost(self, f: LayerFolding, device: Device) -> LayerCost:
        c = self.mvau_cost(f, device)
        c.window = self.window_cost(f.swu_simd, f.parallel_window)
        return c

    def cycles(self, f: LayerFolding) -> tuple[int, int, int]:
        """(mvau, swu, ds) cycles per frame."""
        g = self.geom
        ss = int(f.swu_simd or 1)
        win = self.window_cycles(ss, f.parallel_window) if g.unit != "none" else 0
        return mvau_cycles(g, f.pe, f.simd), win if g.unit == "swu" else 0, win if g.unit == "ds" else 0

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
    cost_model: str = "finn",
    output_last: bool = True,
) -> list[LayerSpec]:
    """Specs of every layer. ``params``: per layer an IntLayer, a weight array [MH, MW]
    or None. Without an IntLayer, a layer's inputs are unsigned (post-ReLU) except the
    first layer's with ``signed_input``, its output codes are the next layer's
    ``a_bits`` wide, and the last layer outputs raw accumulators (FINN's noActivation).

    ``cost_model="finn"``: like FINN's ``minimize_accumulator_width``, the last layer's
    accumulator without activation is rounded up to whole bytes when that layer is the
    graph's output (``output_last``), since it becomes the output stream."""
    check_cost_model(cost_model)
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
        if cost_model == "finn" and ov is None and out_bits is None and output_last and i == len(layers) - 1:
            acc = replace(acc, used=-(-acc.used // 8) * 8)
        narrow_w = bool(w is not None and (w.size == 0 or int(w.min()) > -(1 << (lay.w_bits - 1))))
        specs.append(LayerSpec(lay, g, lay.w_bits, lay.a_bits, a_signed, out_bits, acc, narrow_w, cost_model))
    return specs
