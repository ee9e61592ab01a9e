"""Fused fake-quant kernels for the CPU: each quantizer in one pass forward and one backward.

The torch-op paths of :mod:`qatlab.nn.ste` and ``FakeQuant`` cost five to eight
full-size passes per tensor and a handful of small autograd ops per quantizer; these
kernels (C++, built on first use, see :mod:`.build`) do the same arithmetic in one
pass each way. An observed quantizer (a min/max or EMA range) also observes its range and
derives its qparams inside the same call (:func:`observe_fake_quant_fused`); a quantizer
after a BatchNorm in training takes the BatchNorm into its call
(:func:`batch_norm_fake_quant_fused`: the BN output is never written, and an observed
range comes from the statistics pass). ``FakeQuant`` uses them on float32 CPU tensors when they are available
(and the ``mse`` estimator's range search, :func:`mse_search_fused`, one pass for
all its candidates) and falls back to the torch ops otherwise (``QATLAB_FUSED=0`` forces the fallback).
"""

from .build import FusedBuildError, env_enabled, load_error
from .ops import (
    BNQuantPlan,
    Bounds,
    NonFiniteRangeError,
    ObservePlan,
    batch_norm_fake_quant_fused,
    enabled,
    fake_quant_fused,
    fusable,
    fused_disabled,
    mse_search_fused,
    observe_fake_quant_fused,
    pact_fake_quant_fused,
)

__all__ = [
    "batch_norm_fake_quant_fused",
    "BNQuantPlan",
    "Bounds",
    "FusedBuildError",
    "enabled",
    "env_enabled",
    "fake_quant_fused",
    "fusable",
    "fused_disabled",
    "load_error",
    "mse_search_fused",
    "NonFiniteRangeError",
    "ObservePlan",
    "observe_fake_quant_fused",
    "pact_fake_quant_fused",
]
