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
def capturing(modules: dict[str, nn.Module], keep_graph: bool = False) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While open, every call of a module appends its first input to ``out[name]``
    (detached unless ``keep_graph``: the Hessian needs the live tensor)."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    handles = []
    for name, mod in modules.items():

        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            out[name].append(args[0] if keep_graph else args[0].detach())

        handles.append(mod.register_forward_pre_hook(hook))
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


@contextmanager
def capturing_outputs(modules: dict[str, nn.Module], keep_graph: bool = False) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While open, every call of a module appends its output to ``out[name]`` (detached
    unless ``keep_graph``)."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    handles = []
    for name, mod in modules.items():

        def hook(_m: nn.Module, _args: tuple, y: torch.Tensor, name: str = name) -> None:
            out[name].append(y if keep_graph else y.detach())

        handles.append(mod.register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def quantizer_values(twin: nn.Module, quantizers: dict[str, nn.Module], batches: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """What each quantizer of a :func:`float_twin` passes on over ``batches``,
    concatenated along the batch."""
    with capturing_outputs(quantizers) as got:
        for x in batches:
            twin(x)
    return {n: torch.cat(v) for n, v in got.items() if v}
