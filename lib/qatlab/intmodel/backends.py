"""Executors of an IntModel, by name: ``run(model, x, backend="cpu" | "cuda")``.

A backend is a factory returning an :data:`~qatlab.intmodel.reference.OpRunner`
(one runner per ``run`` call, so a runner may cache per-op state such as device
copies of the weights). Backends living above this package in the layering (the
CuPy kernels) are registered as ``"module:attr"`` strings and imported only when
asked for: importing ``qatlab.intmodel`` never imports ``qatlab.kernels`` or CuPy.

=========  ===================================================================
``cpu``    :func:`qatlab.intmodel.reference.run_op`, the ground truth
``cuda``   :func:`qatlab.kernels.intmodel_backend.cuda_runner`: int8 GEMM kernels
           on the GPU, same codes bit for bit; raises
           :class:`qatlab.kernels.CupyUnavailableError` without CuPy or a GPU
=========  ===================================================================
"""

from __future__ import annotations

import importlib
from typing import Callable, Union

import torch

from . import reference
from .model import IntModel
from .reference import OpRunner

RunnerFactory = Callable[[], OpRunner]

_BACKENDS: dict[str, Union[RunnerFactory, str]] = {
    "cpu": lambda: reference.run_op,
    "cuda": "qatlab.kernels.intmodel_backend:cuda_runner",
}


class UnknownBackendError(ValueError):
    """A backend name that is not registered."""


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def register_backend(name: str, factory: RunnerFactory | str) -> None:
    """Add (or replace) backend ``name``: a runner factory, or ``"module:attr"`` naming one."""
    if isinstance(factory, str) and ":" not in factory:
        raise ValueError(f"backend {name!r}: a factory path must look like 'package.module:function', got {factory!r}")
    _BACKENDS[name] = factory


def get_runner(name: str) -> OpRunner:
    """A fresh op runner of backend ``name`` (it may raise if the backend cannot start here)."""
    try:
        factory = _BACKENDS[name]
    except (KeyError, TypeError):
        raise UnknownBackendError(f"unknown IntModel backend {name!r}; known: {', '.join(backend_names())}") from None
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory()  # type: ignore[operator]


def run(
    model: IntModel,
    x: torch.Tensor,
    batch_size: int = 1000,
    runner: OpRunner | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Output codes (int32) of ``model`` on float inputs ``x`` [B, *input_shape], on ``x``'s device.

    ``backend`` names the executor (default ``"cpu"``, the reference); ``runner`` is a
    custom per-op hook instead (see :func:`qatlab.intmodel.reference.run`).
    """
    if runner is not None and backend is not None:
        raise ValueError("give either runner= (a custom op runner) or backend= (a registered name), not both")
    if runner is None:
        runner = get_runner(backend or "cpu")
    return reference.run(model, x, batch_size, runner).to(x.device)


def predict(model: IntModel, x: torch.Tensor, batch_size: int = 1000, *, backend: str = "cpu") -> torch.Tensor:
    """Class predictions: argmax of the output codes (monotonic in the logits)."""
    return run(model, x, batch_size, backend=backend).argmax(dim=1)
