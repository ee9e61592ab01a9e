"""The public contract: ``quantize``, ``dequantize``, ``fake_quantize``, ``compute_qparams``.

Every granularity is reduced to rows [P, N] (see ``granularity``); the estimator
gives each row a range, ``qparams_from_range`` a scale and zero point, and the
affine map in ``affine`` does the rest.
"""

from __future__ import annotations

import torch

from .affine import dequantize_rows, fake_quantize_rows, quantize_rows
from .estimators import estimate_range
from .granularity import Layout, from_rows, layout_for, to_rows
from .qparams import QParams, qparams_from_range, storage_dtype
from .spec import QuantSpec

# Estimators whose (lo, hi) already propagate NaN/Inf, so the range check catches them.
_PROPAGATING = ("minmax", "ema", "meanstd")


def check_input(x: object, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _check_finite(x: torch.Tensor, name: str = "x") -> None:
    # aminmax reads once and writes nothing; min/max carry NaN and ±Inf through.
    lo, hi = torch.aminmax(x.detach())
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or ±Inf; quantization needs finite values")


def _empty_qparams(x: torch.Tensor, spec: QuantSpec, layout: Layout) -> QParams:
    n = layout.num_params(x.shape)
    zp = 0 if spec.symmetric else min(max(0, spec.qmin), spec.qmax)
    return QParams(
        torch.ones(n, dtype=torch.float32, device=x.device),
        torch.full((n,), zp, dtype=torch.int32, device=x.device),
        spec.qmin,
        spec.qmax,
        layout,
    )


def compute_qparams(x: torch.Tensor, spec: QuantSpec) -> QParams:
    """QParams for ``x`` under ``spec`` (estimator, granularity, scale rule)."""
    check_input(x)
    layout = layout_for(x, spec)
    if x.numel() == 0:
        return _empty_qparams(x, spec, layout)
    if spec.estimator not in _PROPAGATING:
        _check_finite(x)
    lo, hi = estimate_range(to_rows(x.detach(), layout), spec)
    return qparams_from_range(lo, hi, spec, layout)


def _resolve(x: torch.Tensor, spec: QuantSpec, qparams: QParams | None) -> QParams:
    if qparams is None:
        return compute_qparams(x, spec)
    check_input(x)
    if not isinstance(qparams, QParams):
        raise TypeError(f"qparams must be a QParams, got {type(qparams).__name__}")
    lay = qparams.layout
    if lay.kind in ("channel", "group") and lay.axis >= x.dim():
        raise ValueError(f"qparams: axis {lay.axis} is out of range for a tensor of shape {tuple(x.shape)}")
    expected = lay.num_params(x.shape)
    if qparams.scale.numel() != expected:
        raise ValueError(
            f"qparams: {qparams.scale.numel()} scales do not fit a tensor of shape {tuple(x.shape)} "
            f"with granularity {lay.kind} (expected {expected})"
        )
    if x.numel():
        _check_finite(x)
    return qparams


def quantize(x: torch.Tensor, spec: QuantSpec, qparams: QParams | None = None) -> tuple[torch.Tensor, QParams]:
    """Integer codes of ``x`` (smallest integer dtype holding [qmin, qmax]) and their QParams."""
    qp = _resolve(x, spec, qparams)
    dtype = storage_dtype(qp.qmin, qp.qmax)
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=dtype, device=x.device), qp
    rows = to_rows(x.detach().float(), qp.layout)
    q = quantize_rows(rows, qp.scale, qp.zero_point, qp.qmin, qp.qmax).to(dtype)
    return from_rows(q, x.shape, qp.layout), qp


def dequantize(q: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Float32 values ``(q − z) · s`` of integer codes ``q``."""
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.is_floating_point() or q.dtype == torch.bool or q.is_complex():
        raise TypeError(f"q must be an integer tensor, got dtype {q.dtype}")
    if q.numel() == 0:
        return torch.empty(q.shape, dtype=torch.float32, device=q.device)
    rows = to_rows(q, qparams.layout)
    if rows.shape[0] != qparams.scale.numel():
        raise ValueError(f"qparams: {qparams.scale.numel()} scales do not fit codes of shape {tuple(q.shape)}")
    return from_rows(dequantize_rows(rows, qparams.scale, qparams.zero_point), q.shape, qparams.layout)


def fake_quantize(x: torch.Tensor, spec: QuantSpec, qparams: QParams | None = None) -> torch.Tensor:
    """``dequantize(quantize(x))`` in ``x``'s dtype, differentiable in ``x``.

    The gradient is the clipped straight-through estimator (1 inside [qmin, qmax],
    0 outside), as torch's native fake-quant. The identity STE, LSQ and PACT live
    in :mod:`qatlab.nn`. Computed by torch's fused kernels, which the tests hold
    to :func:`fake_quantize_reference` bit for bit.
    """
    qp = _resolve(x, spec, qparams)
    if x.numel() == 0:
        return x.clone()
    orig = x.dtype
    xf = x if orig in (torch.float32, torch.float64) else x.float()
    lay = qp.layout
    if lay.kind == "tensor":
        y = torch.fake_quantize_per_tensor_affine(xf, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
    elif lay.kind == "channel":
        y = torch.fake_quantize_per_channel_affine(xf, qp.scale, qp.zero_point, lay.axis, qp.qmin, qp.qmax)
    else:
        y = from_rows(fake_quantize_rows(to_rows(xf, lay), qp.scale, qp.zero_point, qp.qmin, qp.qmax), x.shape, lay)
    return y.to(orig)


def fake_quantize_reference(x: torch.Tensor, spec: QuantSpec, qparams: QParams | None = None) -> torch.Tensor:
    """Plain composition of elementary ops; the fast path must equal it exactly."""
    q, qp = quantize(x, spec, qparams)
    return dequantize(q, qp).to(x.dtype)
