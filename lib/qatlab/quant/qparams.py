"""QParams: scale and zero point per parameter set, and how they are computed from a range."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .granularity import Layout
from .spec import QuantSpec

# Smallest scale we ever produce. Keeps 1/scale finite in float32 (a denormal scale
# would make it inf, and 0*inf is NaN); values below ~1e-30 quantize to zero.
SCALE_MIN = 2.0**-100


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor.

    ``scale`` (float32) and ``zero_point`` (int32) hold one entry per parameter set,
    in the row order of :func:`qatlab.quant.granularity.to_rows`.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    layout: Layout

    @property
    def bits(self) -> int:
        return int(self.qmax - self.qmin).bit_length()

    def scale_shaped(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """The scale laid out like the tensor's parameter grid (for plots and reports)."""
        return self.scale.reshape(self.layout.param_shape(shape))

    def to(self, device: torch.device | str) -> "QParams":
        return QParams(self.scale.to(device), self.zero_point.to(device), self.qmin, self.qmax, self.layout)


def storage_dtype(qmin: int, qmax: int) -> torch.dtype:
    """Smallest torch integer dtype holding ``[qmin, qmax]``."""
    for dt in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= qmin and qmax <= info.max:
            return dt
    raise ValueError(f"no integer dtype holds [{qmin}, {qmax}]")


def scale_divisor(spec: QuantSpec) -> float:
    """How many quantization steps the clip range spans.

    standard:  symmetric signed ``r / qmax`` (r lands exactly on qmax, nothing clips);
               unsigned ``hi / qmax``; asymmetric ``(hi - lo) / (qmax - qmin)``.
    halfrange: the source text's ``round(x/r · q_max/2)`` with ``q_max = 2^(b-1)``:
               ``r`` lands on ``2^(b-2)``, half the code range, which wastes one bit
               (~6 dB SQNR). Unsigned and asymmetric ranges get the same halving.
               Kept as an explicit erratum so reports can show its cost.
    """
    if spec.scale_rule == "halfrange":
        return float(2 ** (spec.bits - 2)) if (spec.symmetric and spec.is_signed) else float(2 ** (spec.bits - 1))
    if spec.symmetric:
        return float(spec.qmax)
    return float(spec.qmax - spec.qmin)


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec, layout: Layout) -> QParams:
    """Scale and zero point from per-row ranges ``[lo, hi]`` (1-D, one entry per row).

    The range is widened to contain 0 so that zero (padding, ReLU's floor) is exact.
    A zero-width range (an all-zero row) gets scale 1.0: every value maps to 0.
    """
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("x contains NaN or ±Inf; quantization needs finite values")
    # float64 so that ranges near float32's limit do not overflow before the division.
    lo64 = torch.clamp(lo.double(), max=0.0)
    hi64 = torch.clamp(hi.double(), min=0.0)
    qmin, qmax = spec.qmin, spec.qmax
    div = scale_divisor(spec)
    if spec.symmetric:
        width = hi64 if not spec.is_signed else torch.maximum(-lo64, hi64)
    else:
        width = hi64 - lo64
    ok = width > 0
    # The zero point is fitted to the float32 scale that quantization will use.
    scale = torch.where(ok, (width / div).clamp(min=SCALE_MIN), torch.ones_like(width)).float()
    if spec.symmetric:
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        zp = torch.clamp(qmin - torch.round(lo64 / scale.double()), qmin, qmax).to(torch.int32)
        zp = torch.where(ok, zp, torch.full_like(zp, _zero_code(qmin, qmax)))
    return QParams(scale, zp.to(torch.int32), qmin, qmax, layout)


def _zero_code(qmin: int, qmax: int) -> int:
    # An asymmetric all-zero row: 0.0 must map to a code inside the range.
    return min(max(0, qmin), qmax)
