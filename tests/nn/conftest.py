"""What the tests of the fused CPU kernels share: their skip rule, a build check, a bitwise
compare, and the observer written out op by op."""

from __future__ import annotations

import pytest
import torch

from qatlab.nn import fused
from qatlab.nn.fused import build
from qatlab.nn.fused.ops import EMA, RUNNING_MINMAX
from qatlab.quant.estimators import row_minmax

# Skipped where no C++ compiler exists (or QATLAB_FUSED=0); where one does, a build failure
# fails the tests (the fixture below) instead of silently running the fallback.
NEEDS_KERNELS = [
    pytest.mark.skipif(
        build.find_compiler() is None or not build.env_enabled(), reason="no C++ compiler here, or QATLAB_FUSED=0: the fallback path runs"
    ),
    pytest.mark.usefixtures("fused_kernels_built"),
]


@pytest.fixture(scope="module")
def fused_kernels_built() -> None:
    if not fused.enabled():
        pytest.fail(f"a C++ compiler exists but the fused kernels did not build: {fused.load_error()}")


def assert_bitwise(a: torch.Tensor, b: torch.Tensor, zero_sign: bool = True) -> None:
    """Equal as float32 bit patterns; with ``zero_sign=False`` a zero may carry either sign."""
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    same = a.contiguous().view(torch.int32) == b.contiguous().view(torch.int32)
    if not zero_sign:
        same |= (a == 0) & (b == 0)
    assert bool(same.all()), f"{int((~same).sum())} values differ, e.g. {a[~same][:4].tolist()} vs {b[~same][:4].tolist()}"


def rows_of(t: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``t`` as [rows, values]: one row for the tensor, or one per index of ``axis``."""
    return t.reshape(1, -1) if axis is None else t.movedim(axis, 0).reshape(t.shape[axis], -1)


def observe_reference(x, axis, mode, old_lo, old_hi, frac, decay, clamp):  # type: ignore[no-untyped-def]
    """FakeQuant's observer, op by op: the batch min/max of the clamped values per row, a
    search's fractions of the largest magnitude, then the running state (min/max or EMA)."""
    v = x if clamp is None else x.clamp(*clamp)
    lo, hi = row_minmax(rows_of(v, axis))
    if frac is not None:
        mag = torch.maximum(lo.abs(), hi.abs())
        lo, hi = frac[0] * mag, frac[1] * mag
    if mode == RUNNING_MINMAX:
        lo, hi = torch.minimum(old_lo, lo), torch.maximum(old_hi, hi)
    elif mode == EMA:
        lo, hi = decay * old_lo + (1 - decay) * lo, decay * old_hi + (1 - decay) * hi
    return lo, hi
