"""The inputs each layer of a float model sees on given batches (forward pre-hooks)."""

from __future__ import annotations

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
