"""``noise``: the quantization noise of one layer alone, on calibration data.

For each layer and ``(w_bits, a_bits)``: its float output ``y = f(x, W)`` on the
inputs it sees in the float network, against ``f(Q_a(x), Q_w(W))`` with only this
layer quantized; the score is the noise-to-signal ratio ``||ŷ − y||² / ||y||²``
(``10^(−SQNR/10)``). Cheap (no backward pass) but blind to how the rest of the
network amplifies or forgives the noise.

A quantizer that feeds no layer (a residual sum, a squeeze-excitation product, a
pooled value) scores its own tensor's noise-to-signal ratio ``||Q_a(v) − v||² / ||v||²``
at each ``a_bits``, ``v`` its float value with nothing else quantized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qatlab.quant import fake_quantize

from .capture import float_twin, layer_inputs, quantizer_values
from .registry import register
from .sens_types import SensitivityInput, SensitivityTable, act_spec_at, fp32_layer, weight_spec_at
from .space import act_choices, activation_quantizers, layer_choices


def _apply(mod: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.Conv2d):
        return F.conv2d(x, w, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)
    return F.linear(x, w, mod.bias)


@register("noise", version=2, batches=1)
@torch.no_grad()
def noise_sensitivity(inp: SensitivityInput) -> SensitivityTable:
    mods = {s.name: fp32_layer(inp.fp32, s.name) for s in inp.space.layers}
    xs = [x for x, _ in list(inp.data.calib)[: int(inp.options["batches"])]]
    inputs = layer_inputs(inp.fp32, mods, xs)
    table: SensitivityTable = {}
    for slot in inp.space.layers:
        mod, x = mods[slot.name], inputs[slot.name]
        y = _apply(mod, x, mod.weight)
        power = float((y.double() ** 2).sum()) or 1.0
        wq = {b: fake_quantize(mod.weight, weight_spec_at(inp.w_spec, b)) for b in inp.space.knobs[slot.w_knob].domain}
        xq = {b: fake_quantize(x, act_spec_at(inp.a_spec, b)) for b in inp.space.knobs[slot.a_knob].domain}
        table[slot.name] = {
            (w, a): float(((_apply(mod, xq[a], wq[w]) - y).double() ** 2).sum()) / power for w, a in layer_choices(inp.space, slot)
        }
    table.update(_act_noise(inp, xs))
    return table


def _act_noise(inp: SensitivityInput, xs: list[torch.Tensor]) -> SensitivityTable:
    if not inp.space.acts:
        return {}
    twin = float_twin(inp.qat)
    fqs = activation_quantizers(twin)
    vals = quantizer_values(twin, {a.key: fqs[a.key] for a in inp.space.acts}, xs)
    table: SensitivityTable = {}
    for act in inp.space.acts:
        v = vals[act.key]
        power = float((v.double() ** 2).sum()) or 1.0
        spec = fqs[act.key].spec  # its own signedness: a sigmoid's or a ReLU's output is unsigned
        table[act.key] = {
            (0, a): float(((fake_quantize(v, act_spec_at(spec, a)) - v).double() ** 2).sum()) / power
            for _, a in act_choices(inp.space, act)
        }
    return table
