"""``measured`` and ``measured_loss``: what the validation set says with only one layer
quantized.

As AIMET's automatic mixed precision measures it: for each layer and ``(w_bits,
a_bits)``, the network is prepared with that layer at those bits, calibrated, and
every quantizer but the layer's weights and its input switched off. ``measured``
scores the FP32 validation accuracy minus that model's (in points; may be slightly
negative); ``measured_loss`` scores its validation cross-entropy minus the FP32
model's (in nats). A quantizer that feeds no layer scores the same way with only
itself on, at each ``a_bits``.

The two see the same models. Accuracy moves in steps of one sample and barely at all
while a layer's noise leaves the argmax alone, so at 4 or 8 bits most layers score
within a few samples of zero and the ranking among them is noise. The loss moves with
every logit: it keeps ``hessian``'s smooth ranking of small perturbations while, being
measured rather than a second-order estimate, it still sees a layer that a 2-bit grid
breaks outright. The slowest methods: one calibration and one evaluation per layer and
choice.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qatlab.nn import calibrate, prepare_qat
from qatlab.nn.fake_quant import FakeQuant

from .registry import register
from .sens_types import SensitivityInput, SensitivityTable
from .space import act_choices, activation_quantizers, layer_choices

# A model and the validation set -> a figure where higher is worse.
Score = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def _minus_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    # Negated rather than 100 − accuracy: the difference of two scores is then exactly
    # the accuracy drop, as version 2 cached it.
    return -100.0 * int((_logits(model, x).argmax(1) == y).sum()) / len(x)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(_logits(model, x).double(), y))


def _one_layer_scores(inp: SensitivityInput, score: Score) -> SensitivityTable:
    vx, vy = inp.data.val
    base = score(inp.fp32, vx, vy)
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
            row[(w, a)] = score(q, vx, vy) - base
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
            row[(0, a)] = score(q, vx, vy) - base
        table[act.key] = row
    return table


@register("measured", version=2, batches=2)
def measured_sensitivity(inp: SensitivityInput) -> SensitivityTable:
    return _one_layer_scores(inp, _minus_accuracy)


@register("measured_loss", version=1, batches=2)
def measured_loss_sensitivity(inp: SensitivityInput) -> SensitivityTable:
    return _one_layer_scores(inp, _loss)
