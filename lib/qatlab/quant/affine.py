"""The affine map on rows [P, N], with one (scale, zero_point) per row.

``q = clamp(round(x · (1/s)) + z, qmin, qmax)``, ``x̂ = (q − z) · s``, round half to even.
We multiply by the float32 reciprocal of the scale, as torch's native fake-quant
kernels do, so that our results equal theirs bit for bit given the same qparams
(``x / s`` and ``x · (1/s)`` differ in the last ulp for some x, which moves ties).

Each op has a plain reference (``*_reference``) built from elementary torch ops,
and the fast path (torch's fused native kernel) is tested against it.
"""

from __future__ import annotations

import torch


def quantize_rows(rows: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Integer codes of ``rows`` as a float tensor (exact integers); cast by the caller."""
    inv = (1.0 / scale.float())[:, None]
    return (torch.round(rows * inv) + zero_point[:, None]).clamp_(qmin, qmax)


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return (q.float() - zero_point[:, None].float()) * scale.float()[:, None]


def fake_quantize_rows_reference(rows: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return dequantize_rows(quantize_rows(rows, scale, zero_point, qmin, qmax), scale, zero_point).to(rows.dtype)


def fake_quantize_rows(rows: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Fast path: torch's fused per-channel kernel over the rows (clipped-STE gradient)."""
    return torch.fake_quantize_per_channel_affine(rows, scale.float(), zero_point.to(torch.int32), 0, qmin, qmax)
