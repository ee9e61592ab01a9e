"""``measured``: the validation accuracy lost with only one layer quantized.

As AIMET's automatic mixed precision measures it: for each layer and ``(w_bits,
a_bits)``, the network is prepared with that layer at those bits, calibrated, and
every quantizer but the layer's weights and its input switched off; the score is
the FP32 validation accuracy minus that model's (in points; may be slightly
negative). The most faithful of the three, and the slowest: one calibration and one
evaluation per layer and choice. A quantizer that feeds no layer scores the same way
with only itself on, at each ``a_bits``.
"""

from __future__ import annotations

import torch
from torch import nn

from qatlab.nn import calibrate, prepare_qat
from qatlab.nn.fake_quant import FakeQuant

from .registry import register
from .sens_types import SensitivityInput, SensitivityTable
from .space import act_choices, activation_quantizers, layer_choices


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    hits = 0
    for i in range(0, len(x), batch):
        hits += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return 100.0 * hits / len(x)


@register("measured", version=2, batches=2)
def measured_sensitivity(inp: SensitivityInput) -> SensitivityTable:
    vx, vy = inp.data.val
    base = _accuracy(inp.fp32, vx, vy)
    xs = [x for x, _ in list(inp.data.calib)[: int(inp.options["batches"])]]
    table: SensitivityTable = {}
    for slot in inp.space.layers:
        row = {}
        for w, a in layer_choices(inp.space, slot):
            q = prepare_qat(inp.fp32, inp.w_spec, inp.a_spec, inp.ste, layer_bits={slot.name: (w, a)})
            calibrate(q, iter(xs))
            layer = q.get_submodule(slot.name)
            keep = {id(layer.weight_fq), id(getattr(layer, "_input_fq", None))}
            for m in q.modules():
                if isinstance(m, FakeQuant) and id(m) not in keep:
                    m.enabled = False
            row[(w, a)] = base - _accuracy(q, vx, vy)
        table[slot.name] = row
    for act in inp.space.acts:
        row = {}
        for _, a in act_choices(inp.space, act):
            q = prepare_qat(inp.fp32, inp.w_spec, inp.a_spec, inp.ste, layer_bits={act.key: (a,)})
            calibrate(q, iter(xs))
            keep = activation_quantizers(q)[act.key]
            for m in q.modules():
                if isinstance(m, FakeQuant) and m is not keep:
                    m.enabled = False
            row[(0, a)] = base - _accuracy(q, vx, vy)
        table[act.key] = row
    return table
