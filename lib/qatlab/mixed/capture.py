"""The tensors a network computes on given batches: each layer's input in the float
model (forward pre-hooks), and each activation quantizer's float value (forward hooks
on a float twin of the QAT model)."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn


@contextmanager
def capturing(modules: dict[str, nn.Module], keep_graph: bool = False, outputs: bool = False) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While open, every call of a module appends its first input (its output, with
    ``outputs``) to ``out[name]`` (detached unless ``keep_graph``: the Hessian needs the
    live tensor)."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    handles = []
    for name, mod in modules.items():

        def keep(t: torch.Tensor, name: str = name) -> None:
            out[name].append(t if keep_graph else t.detach())

        if outputs:
            handles.append(mod.register_forward_hook(lambda _m, _a, y, keep=keep: keep(y)))
        else:
            handles.append(mod.register_forward_pre_hook(lambda _m, args, keep=keep: keep(args[0])))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def layer_inputs(model: nn.Module, modules: dict[str, nn.Module], batches: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each module's inputs over ``batches`` (eval mode), concatenated along the batch."""
    was = model.training
    model.eval()
    try:
        with capturing(modules) as got:
            for x in batches:
                model(x)
    finally:
        model.train(was)
    return {n: torch.cat(v) for n, v in got.items() if v}


def float_twin(qat: nn.Module) -> nn.Module:
    """A copy of a prepared model computing in float: every quantizer off (what each
    activation quantizer then passes on is the float value it would quantize), eval
    mode. Its lookup-table activations are spelled twice differentiable (torch has no
    double backward for the fused hardswish/hardsigmoid kernels)."""
    from qatlab.nn.fake_quant import set_fake_quant, set_observe
    from qatlab.nn.modules import QuantLUT

    twin = copy.deepcopy(qat).eval()
    set_fake_quant(twin, False)
    set_observe(twin, False)
    for m in twin.modules():
        if isinstance(m, QuantLUT) and m.fn in _SMOOTH:
            m.apply_fn = _SMOOTH[m.fn]  # an instance attribute shadows the method
    return twin


def _hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def _hardswish(x: torch.Tensor) -> torch.Tensor:
    return x * _hardsigmoid(x)


_SMOOTH = {"hardsigmoid": _hardsigmoid, "hardswish": _hardswish}


@torch.no_grad()
def quantizer_values(twin: nn.Module, quantizers: dict[str, nn.Module], batches: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """What each quantizer of a :func:`float_twin` passes on over ``batches``,
    concatenated along the batch."""
    with capturing(quantizers, outputs=True) as got:
        for x in batches:
            twin(x)
    return {n: torch.cat(v) for n, v in got.items() if v}
