"""``hessian``: HAWQ-V2's second-order sensitivity (Dong et al., NeurIPS 2020).

``Ω = Tr(H)/n · ||Q(W) − W||²``: the average curvature of the loss along a layer's
weights, times the squared quantization perturbation. ``Tr(H)`` is estimated with
Hutchinson's method, ``E[vᵀHv]`` over Rademacher vectors ``v`` (``Hv`` by a second
backward pass through the first, torch autograd's double backward). The same term is
added for the layer's input activations (the Hessian with respect to the tensor the
layer reads, times its quantization perturbation), so ``a_bits`` is priced as well:
``Ω(w, a) = Ω_W(w) + Ω_x(a)``. All layers are estimated in one pass per sample
(independent ``v`` per layer keep each block's estimate unbiased).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qatlab.quant import fake_quantize

from .capture import capturing
from .registry import register
from .sens_types import SensitivityInput, SensitivityTable, act_spec_at, fp32_layer, weight_spec_at
from .space import layer_choices


def rademacher(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, like.shape, generator=gen, dtype=torch.int8).to(like.dtype).mul_(2).sub_(1)


def hutchinson_trace(loss: torch.Tensor, inputs: Sequence[torch.Tensor], samples: int, gen: torch.Generator) -> list[float]:
    """Hutchinson estimates of ``Tr(∂²loss/∂t²)`` for each tensor ``t`` of ``inputs``
    (the diagonal blocks of the Hessian), averaged over ``samples`` Rademacher draws."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    grads = torch.autograd.grad(loss, list(inputs), create_graph=True)
    # A gradient with no graph of its own is constant: that block's Hessian is zero.
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    tr = [0.0] * len(inputs)
    for _ in range(samples):
        vs = [rademacher(t, gen) for t in inputs]
        if not live:
            continue
        hv = torch.autograd.grad(
            [grads[i] for i in live], list(inputs), grad_outputs=[vs[i] for i in live], retain_graph=True, allow_unused=True
        )
        for i, (v, h) in enumerate(zip(vs, hv)):
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


@register("hessian", batches=1, samples=8, batch=64)
def hessian_sensitivity(inp: SensitivityInput) -> SensitivityTable:
    model = twice_differentiable(inp.fp32)
    mods = {s.name: fp32_layer(model, s.name) for s in inp.space.layers}
    names = list(mods)
    gen = torch.Generator().manual_seed(inp.seed)
    # Curvature is an average over samples: a 64-sample batch ranks layers like a full
    # one, at half the cost of each double backward.
    cap = int(inp.options["batch"])
    batches = [(x[:cap], y[:cap]) for x, y in list(inp.data.calib)[: int(inp.options["batches"])]]
    tr_w = dict.fromkeys(names, 0.0)
    tr_x = dict.fromkeys(names, 0.0)
    pert_x: dict[str, dict[int, float]] = {n: {} for n in names}
    numel_x = dict.fromkeys(names, 0)
    was = model.training
    model.eval()
    try:
        for x, y in batches:
            x = x.detach().clone().requires_grad_(True)  # the first layer's input is the data itself
            with capturing(mods, keep_graph=True) as got:
                loss = F.cross_entropy(model(x), y)
            acts = [got[n][0] for n in names]  # a module called twice: its first call
            weights = [mods[n].weight for n in names]
            trs = hutchinson_trace(loss, weights + acts, int(inp.options["samples"]), gen)
            for i, n in enumerate(names):
                # A few Rademacher draws can give a slightly negative trace where the
                # curvature is ~0; a layer never scores below zero.
                tr_w[n] += max(trs[i], 0.0) / len(batches)
                tr_x[n] += max(trs[len(names) + i], 0.0) / len(batches)
                a = acts[i].detach()
                numel_x[n] += a.numel()
                slot = inp.space.layer(n)
                for b in inp.space.knobs[slot.a_knob].domain:
                    d = float(((fake_quantize(a, act_spec_at(inp.a_spec, b)) - a).double() ** 2).sum())
                    pert_x[n][b] = pert_x[n].get(b, 0.0) + d
    finally:
        model.train(was)
        model.zero_grad(set_to_none=True)
    table: SensitivityTable = {}
    with torch.no_grad():
        for n in names:
            slot = inp.space.layer(n)
            w = mods[n].weight
            omega_w = {b: tr_w[n] / w.numel() * float(((fake_quantize(w, weight_spec_at(inp.w_spec, b)) - w).double() ** 2).sum())
                       for b in inp.space.knobs[slot.w_knob].domain}  # fmt: skip
            # per-batch traces were averaged; the perturbations summed over batches: per element
            omega_x = {b: tr_x[n] * len(batches) / max(numel_x[n], 1) * pert_x[n][b] / len(batches) for b in pert_x[n]}
            table[n] = {(wb, ab): omega_w[wb] + omega_x[ab] for wb, ab in layer_choices(inp.space, slot)}
    return table
