"""What a sensitivity method reads and returns, and the helpers the methods share."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from qatlab.quant import QuantSpec

from .errors import MixedPrecisionError
from .space import DecisionSpace

SensitivityTable = dict[str, dict[tuple[int, int], float]]


@dataclass(frozen=True)
class SensitivityData:
    """Labelled batches: ``calib`` for the noise and Hessian estimates, ``val`` for
    measured accuracy."""

    calib: Sequence[tuple[torch.Tensor, torch.Tensor]]
    val: tuple[torch.Tensor, torch.Tensor]

    def __post_init__(self) -> None:
        if not self.calib:
            raise MixedPrecisionError("sensitivity data needs at least one calibration batch")
        if len(self.val[0]) == 0 or len(self.val[0]) != len(self.val[1]):
            raise MixedPrecisionError("sensitivity data needs a non-empty validation set with one label per sample")

    def digest(self) -> str:
        h = hashlib.sha256()
        for x, y in [*self.calib, self.val]:
            for t in (x, y):
                c = t.detach().cpu().contiguous()
                h.update(str((tuple(c.shape), str(c.dtype))).encode())
                h.update(c.numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class SensitivityInput:
    fp32: nn.Module
    qat: nn.Module  # the model prepare_qat made of fp32 (the space's source)
    space: DecisionSpace
    w_spec: QuantSpec
    a_spec: QuantSpec
    ste: str
    data: SensitivityData
    options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0


def fp32_layer(model: nn.Module, name: str) -> nn.Module:
    """The float conv/linear a QAT layer was made from (prepare_qat keeps its name)."""
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise MixedPrecisionError(f"the FP32 model has no module {name!r}") from None
    if not isinstance(mod, (nn.Conv2d, nn.Linear)):
        raise MixedPrecisionError(f"FP32 module {name!r} is a {type(mod).__name__}, not a conv or linear")
    return mod


def weight_spec_at(spec: QuantSpec, bits: int) -> QuantSpec:
    return spec.with_(bits=bits)


def act_spec_at(spec: QuantSpec, bits: int) -> QuantSpec:
    # A moving average needs a stream; one captured tensor gets its plain range.
    return spec.with_(bits=bits, estimator="minmax" if spec.estimator == "ema" else spec.estimator)
