"""Range estimators: rows [P, N] -> per-row clip range (lo, hi).

Each is a pure function registered by name. ``ema`` is stateful across batches;
:class:`EMARange` holds that state (used by the activation observers in ``nn``);
called statelessly, ``ema`` is the first step of the average, i.e. ``minmax``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .affine import fake_quantize_rows
from .granularity import Layout
from .qparams import qparams_from_range
from .spec import QuantSpec

Estimator = Callable[[torch.Tensor, QuantSpec], "tuple[torch.Tensor, torch.Tensor]"]
ESTIMATOR_FNS: dict[str, Estimator] = {}


def register(name: str) -> Callable[[Estimator], Estimator]:
    def deco(fn: Estimator) -> Estimator:
        ESTIMATOR_FNS[name] = fn
        return fn

    return deco


def estimate_range(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (lo, hi) of ``rows`` [P, N] by ``spec.estimator``, as float32 [P]."""
    with torch.no_grad():
        lo, hi = ESTIMATOR_FNS[spec.estimator](rows.detach(), spec)
    return lo.float(), hi.float()


@register("minmax")
def minmax(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return row_minmax(rows)


def row_minmax(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # amin/amax, not aminmax(dim=1): on CPU the latter is ~6x slower (torch 2.13), and
    # a single row reduces fastest as a whole tensor (uses every thread).
    if rows.shape[0] == 1:
        lo, hi = torch.aminmax(rows)
        return lo.reshape(1), hi.reshape(1)
    return rows.amin(1), rows.amax(1)


@register("ema")
def ema(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return minmax(rows, spec)


@register("meanstd")
def meanstd(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    # Population std (correction=0): defined for one value per row (element granularity).
    std, mean = torch.std_mean(rows.double(), dim=1, correction=0)
    return mean - spec.alpha * std, mean + spec.alpha * std


@register("percentile")
def percentile(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    # kthvalue, not torch.quantile: quantile refuses inputs over 2^24 elements.
    n = rows.shape[1]
    k_hi = min(n, max(1, math.ceil(spec.percentile / 100.0 * n)))
    if spec.symmetric and spec.is_signed:
        hi = torch.kthvalue(rows.abs(), k_hi, dim=1).values
        return -hi, hi
    k_lo = max(1, n + 1 - k_hi)
    return torch.kthvalue(rows, k_lo, dim=1).values, torch.kthvalue(rows, k_hi, dim=1).values


@register("mse")
def mse(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid search of the clip range ``k/n · [lo, hi]`` minimising the row's squared error."""
    lo0, hi0 = minmax(rows, spec)
    best_err = torch.full_like(lo0, math.inf, dtype=torch.float64)
    best_lo, best_hi = lo0.clone(), hi0.clone()
    layout = Layout("tensor")  # rows are already laid out; only the per-row values matter
    for k in range(1, spec.mse_grid + 1):
        f = k / spec.mse_grid
        lo, hi = lo0 * f, hi0 * f
        qp = qparams_from_range(lo, hi, spec, layout)
        err = (fake_quantize_rows(rows, qp.scale, qp.zero_point, qp.qmin, qp.qmax) - rows).double().pow(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo, best_lo)
        best_hi = torch.where(better, hi, best_hi)
    return best_lo, best_hi


@register("entropy")
def entropy(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """TensorRT-style calibration: the clip threshold whose quantized histogram of |x|
    is closest, in KL divergence, to the clipped reference histogram.

    Symmetric signed and asymmetric specs search a threshold ``t`` on ``|x|`` with
    ``(qmax+1)`` (resp. half the code count) levels per side; unsigned specs on
    ``max(x, 0)``. Asymmetric ranges are ``[max(min, -t), min(max, t)]``.
    """
    if spec.symmetric and not spec.is_signed:
        levels = spec.qmax + 1
    elif spec.symmetric:
        levels = spec.qmax + 1
    else:
        levels = (spec.qmax - spec.qmin + 1) // 2
    n = rows.shape[1]
    if n < levels:
        raise ValueError(
            f"estimator 'entropy' needs at least {levels} values per quantization group to build a "
            f"histogram, got {n} (granularity {spec.granularity!r}); use minmax/mse for small groups"
        )
    mag = rows.clamp(min=0) if (spec.symmetric and not spec.is_signed) else rows.abs()
    t = torch.from_numpy(_kl_thresholds(mag.double().numpy(), levels, max(spec.entropy_bins, 2 * levels)))
    lo, hi = minmax(rows, spec)
    t = t.to(lo.dtype)
    if spec.symmetric:
        return -t, t
    return torch.maximum(lo, -t), torch.minimum(hi, t)


def _kl_thresholds(mag: np.ndarray, levels: int, bins: int) -> np.ndarray:
    """Per row of non-negative ``mag`` [P, N]: the KL-optimal clip threshold."""
    p_rows = mag.shape[0]
    top = mag.max(axis=1)
    width = np.where(top > 0, top / bins, 1.0)
    idx = np.minimum((mag / width[:, None]).astype(np.int64), bins - 1)
    flat = (idx + (np.arange(p_rows) * bins)[:, None]).ravel()
    hist = np.bincount(flat, minlength=p_rows * bins).reshape(p_rows, bins).astype(np.float64)
    stride = max(1, (bins - levels) // 128)
    best_kl = np.full(p_rows, np.inf)
    best_i = np.full(p_rows, bins)
    for i in list(range(levels, bins, stride)) + [bins]:
        ref = hist[:, :i].copy()
        ref[:, i - 1] += hist[:, i:].sum(axis=1)  # outliers fold into the last kept bin
        starts = (np.arange(levels) * i) // levels  # levels chunks over i bins
        nz = hist[:, :i] > 0
        sums = np.add.reduceat(hist[:, :i], starts, axis=1)
        counts = np.add.reduceat(nz.astype(np.float64), starts, axis=1)
        lens = np.diff(np.append(starts, i))
        per_bin = np.repeat(np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0), lens, axis=1)
        cand = np.where(nz, per_bin, 0.0)
        kl = _kl(ref, cand)
        better = kl < best_kl
        best_kl = np.where(better, kl, best_kl)
        best_i = np.where(better, i, best_i)
    return np.where(top > 0, (best_i + 0.5) * width, 0.0).astype(np.float64).clip(max=top)


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    p_sum = p.sum(axis=1, keepdims=True)
    q_sum = q.sum(axis=1, keepdims=True)
    p = p / np.where(p_sum > 0, p_sum, 1.0)
    q = q / np.where(q_sum > 0, q_sum, 1.0)
    q = np.where((q == 0) & (p > 0), eps, q)  # smoothing: a bin p has and q lacks costs, not infinity
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(axis=1)


class EMARange:
    """Exponential moving average of per-row min/max across calls (activation observer state)."""

    def __init__(self, decay: float = 0.9) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def update(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            lo, hi = row_minmax(rows.detach().float())
        if self.lo is None or self.hi is None or self.lo.shape != lo.shape:
            self.lo, self.hi = lo, hi
        else:
            d = self.decay
            self.lo = d * self.lo + (1 - d) * lo
            self.hi = d * self.hi + (1 - d) * hi
        return self.lo, self.hi
