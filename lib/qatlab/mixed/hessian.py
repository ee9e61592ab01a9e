"""``hessian``: HAWQ-V2's second-order sensitivity (Dong et al., NeurIPS 2020), with
the same term for the layer's input activations.

``Ω(w, a) = Ω_W(w) + Ω_x(a)``:

* ``Ω_W = Tr(H_W)/n_W · ||Q_w(W) − W||²``: the average curvature of the loss along a
  layer's weights times the squared weight perturbation (HAWQ-V2/V3, which mix weight
  bits only).
* ``Ω_x = Tr(H_x)/n_x · ||Q_a(x) − x||²``: the same for the tensor the layer reads,
  ``H_x`` the Hessian of the batch loss with respect to that activation, and the
  perturbation measured on the calibration activations with the quantizer's own range
  estimator at that bit width (so the clipping error of a tight 2-bit range counts,
  not only the rounding step).

``Tr(H)`` is Hutchinson's ``E[vᵀHv]`` over Rademacher ``v`` (``Hv`` by a second
backward pass through the first, torch autograd's double backward), each weight and
activation tensor probed alone. One probe shared by all tensors is unbiased for every
block too, but its variance carries the cross blocks, which can dwarf a small block's
own curvature: on a trained LeNet a shared probe gave −0.7 for the first layer's input,
whose trace is +0.29, and on the MobileNet-style model four of 29 weight blocks (squeeze-
excitation and a late projection) came out negative; clamped at zero, those bits looked
free.

A quantizer that feeds no layer (a residual sum, a squeeze-excitation product, a
pooled value, the logits) scores ``Ω_v(a) = Tr(H_v)/n_v · ||Q_a(v) − v||²`` alone, ``v``
the float value it quantizes, probed on a float twin of the QAT model (every quantizer
off), where those values are module outputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qatlab.quant import QuantSpec, fake_quantize

from .capture import capturing, float_twin
from .registry import register
from .sens_types import SensitivityInput, SensitivityTable, act_spec_at, fp32_layer, weight_spec_at
from .space import act_choices, activation_quantizers, layer_choices


def rademacher(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, like.shape, generator=gen, dtype=torch.int8).to(like.dtype).mul_(2).sub_(1)


def block_traces(loss: torch.Tensor, inputs: Sequence[torch.Tensor], samples: int, gen: torch.Generator) -> list[float]:
    """Hutchinson estimates of ``Tr(∂²loss/∂t²)`` for each tensor ``t`` of ``inputs``,
    each probed alone (``v`` on ``t`` only, so no cross block enters its estimate):
    one Hessian-vector product per tensor and sample instead of one per sample."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    grads = torch.autograd.grad(loss, list(inputs), create_graph=True)
    tr = [0.0] * len(inputs)
    for _ in range(samples):
        for i, (t, g) in enumerate(zip(inputs, grads)):
            v = rademacher(t, gen)  # drawn even when unused: the draws never depend on the graph
            if not g.requires_grad:  # a constant gradient: this block's Hessian is zero
                continue
            (h,) = torch.autograd.grad(g, t, grad_outputs=v, retain_graph=True, allow_unused=True)
            if h is not None:
                tr[i] += float((v * h).sum())
    return [t / samples for t in tr]


def exact_trace(fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor) -> float:
    """``Tr`` of the Hessian of a scalar ``fn`` at ``t`` (dense; tiny tensors only)."""
    h = torch.autograd.functional.hessian(fn, t)
    n = t.numel()
    return float(h.reshape(n, n).diagonal().sum())


class _HardSigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


class _HardSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.clamp(x + 3.0, 0.0, 6.0) / 6.0)


_TWICE_DIFFERENTIABLE = {nn.Hardsigmoid: _HardSigmoid, nn.Hardswish: _HardSwish}


def twice_differentiable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose hardsigmoid/hardswish modules are spelled with clamp:
    the same function, but torch has no double backward for the fused kernels."""
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        new = _TWICE_DIFFERENTIABLE.get(type(mod))
        if new is not None and name:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new())
    return model


def _sq_error(t: torch.Tensor, spec: QuantSpec) -> float:
    return float(((fake_quantize(t, spec) - t).double() ** 2).sum())


@dataclass
class _Curvature:
    """Per-layer Hessian traces (each averaged over batches) and the activation
    perturbations summed over the same batches, per candidate bit width."""

    tr_w: dict[str, float]
    tr_x: dict[str, float]
    numel_x: dict[str, int] = field(default_factory=dict)
    err_x: dict[str, dict[int, float]] = field(default_factory=dict)


def _curvature(inp: SensitivityInput, model: nn.Module, mods: dict[str, nn.Module], batches: list, gen: torch.Generator) -> _Curvature:
    names = list(mods)
    samples = int(inp.options["samples"])
    cur = _Curvature(dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0), dict.fromkeys(names, 0), {n: {} for n in names})
    for x, y in batches:
        x = x.detach().clone().requires_grad_(True)  # the first layer's input is the data itself
        with capturing(mods, keep_graph=True) as got:
            loss = F.cross_entropy(model(x), y)
        acts = [got[n][0] for n in names]  # a module called twice: its first call
        trs = block_traces(loss, [mods[n].weight for n in names] + acts, samples, gen)
        tr_w, tr_x = trs[: len(names)], trs[len(names) :]
        for i, n in enumerate(names):
            # A few Rademacher draws can give a slightly negative trace where the
            # curvature is ~0; a layer never scores below zero.
            cur.tr_w[n] += max(tr_w[i], 0.0) / len(batches)
            cur.tr_x[n] += max(tr_x[i], 0.0) / len(batches)
            a = acts[i].detach()
            cur.numel_x[n] += a.numel()
            for b in inp.space.knobs[inp.space.layer(n).a_knob].domain:
                # the quantizer's own estimator on this batch: its clipping is part of the error
                cur.err_x[n][b] = cur.err_x[n].get(b, 0.0) + _sq_error(a, act_spec_at(inp.a_spec, b))
    return cur


@register("hessian", version=3, batches=1, samples=8, batch=64)
def hessian_sensitivity(inp: SensitivityInput) -> SensitivityTable:
    model = twice_differentiable(inp.fp32)
    mods = {s.name: fp32_layer(model, s.name) for s in inp.space.layers}
    gen = torch.Generator().manual_seed(inp.seed)
    # Curvature is an average over samples: a 64-sample batch ranks layers like a full
    # one, at half the cost of each double backward.
    cap = int(inp.options["batch"])
    batches = [(x[:cap], y[:cap]) for x, y in list(inp.data.calib)[: int(inp.options["batches"])]]
    was = model.training
    model.eval()
    try:
        cur = _curvature(inp, model, mods, batches, gen)
    finally:
        model.train(was)
        model.zero_grad(set_to_none=True)
    table: SensitivityTable = {}
    with torch.no_grad():
        for n, mod in mods.items():
            slot = inp.space.layer(n)
            w = mod.weight
            omega_w = {
                b: cur.tr_w[n] / w.numel() * _sq_error(w, weight_spec_at(inp.w_spec, b)) for b in inp.space.knobs[slot.w_knob].domain
            }
            # Tr(H_x)/n_x · ||δ||² of one batch = Tr(H_x) · (mean squared error per element);
            # the error and numel_x are both summed over the batches, so their ratio is that mean.
            omega_x = {b: cur.tr_x[n] * cur.err_x[n][b] / max(cur.numel_x[n], 1) for b in cur.err_x[n]}
            table[n] = {(wb, ab): omega_w[wb] + omega_x[ab] for wb, ab in layer_choices(inp.space, slot)}
    table.update(_act_curvature(inp, batches))
    return table


def _act_curvature(inp: SensitivityInput, batches: list) -> SensitivityTable:
    """``Tr(H_v)/n_v · ||Q_a(v) − v||²`` of each quantizer that feeds no layer."""
    if not inp.space.acts:
        return {}
    twin = float_twin(inp.qat)
    fqs = activation_quantizers(twin)
    keys = [a.key for a in inp.space.acts]
    # Its own generator: the layers' probes stay those of a space without these knobs.
    gen = torch.Generator().manual_seed(inp.seed + 1)
    tr = dict.fromkeys(keys, 0.0)
    numel = dict.fromkeys(keys, 0)
    err: dict[str, dict[int, float]] = {k: {} for k in keys}
    for p in twin.parameters():
        p.requires_grad_(False)  # only the activations' curvature is wanted
    for x, y in batches:
        x = x.detach().clone().requires_grad_(True)  # with the weights frozen, the graph hangs on the input
        with capturing({k: fqs[k] for k in keys}, keep_graph=True, outputs=True) as got:
            loss = F.cross_entropy(twin(x), y)
        vals = [got[k][0] for k in keys]  # a quantizer called twice: its first call
        live = [v.requires_grad for v in vals]
        trs = block_traces(loss, [v for v, ok in zip(vals, live) if ok], int(inp.options["samples"]), gen) if any(live) else []
        it = iter(trs)
        for k, v, ok in zip(keys, vals, live):
            t = next(it) if ok else 0.0  # a value the loss does not depend on through gradients
            tr[k] += max(t, 0.0) / len(batches)
            d = v.detach()
            numel[k] += d.numel()
            spec = fqs[k].spec
            for b in inp.space.knobs[inp.space.acts[keys.index(k)].knob].domain:
                err[k][b] = err[k].get(b, 0.0) + _sq_error(d, act_spec_at(spec, b))
    return {a.key: {(0, b): tr[a.key] * err[a.key][b] / max(numel[a.key], 1) for _, b in act_choices(inp.space, a)} for a in inp.space.acts}
