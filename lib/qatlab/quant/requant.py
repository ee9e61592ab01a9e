"""Integer requantization: int32 accumulator -> output code, as integer-only hardware does it.

Two rounding paths, both part of a model's record:

* ``float``: ``clamp(round_half_even(acc · M) + z, qmin, qmax)`` with ``acc · M`` in
  float64 (exact for any int32 accumulator and float32-derived M, then rounded once).
* ``fixed``: gemmlowp / TFLite ``MultiplyByQuantizedMultiplier``: M = m · 2^shift with
  an int32 multiplier ``m`` in [2^30, 2^31), a saturating rounding doubling high
  multiply, then a rounding (half away from zero) arithmetic right shift.

Fast paths work on int64 torch tensors (CPU or GPU); ``*_reference`` are plain
Python integer arithmetic, one element at a time, and the tests compare the two.
"""

from __future__ import annotations

import math

import numpy as np
import torch

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ROUNDING_MODES = ("float", "fixed")


def quantize_multiplier(real: float | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers -> (int32 multiplier, int shift) with ``real ≈ m · 2^(shift − 31)``.

    As TFLite's ``QuantizeMultiplier``: ``frexp`` gives ``real = f · 2^e`` with f in
    [0.5, 1); ``m = round(f · 2^31)`` (half away from zero); ``m == 2^31`` bumps ``e``.
    A zero multiplier gives (0, 0). Negative, NaN or infinite multipliers are errors.
    Multipliers below 2^-31 (which would need a shift past 31) round to (0, 0).
    """
    r = np.asarray(real.detach().cpu().numpy() if isinstance(real, torch.Tensor) else real, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError("requant multiplier must be finite and non-negative")
    frac, exp = np.frexp(r)
    m = np.floor(frac * 2.0**31 + 0.5).astype(np.int64)  # half away from zero (frac >= 0)
    bump = m == 2**31
    m = np.where(bump, m // 2, m)
    exp = np.where(bump, exp + 1, exp).astype(np.int64)
    tiny = (r == 0) | (exp < -31)
    m = np.where(tiny, 0, m)
    exp = np.where(tiny, 0, exp)
    if np.any(exp > 30):
        raise ValueError("requant multiplier too large (>= 2^30) for a fixed-point shift")
    return m.astype(np.int32), exp.astype(np.int32)


class FixedPointRangeError(ValueError):
    """Values too wide for the int32 input of the fixed-point multiply, even unshifted."""


def pre_shift_multiplier(real: float | np.ndarray | torch.Tensor, bound: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Fixed-point form of multipliers ``real`` for integers ``|v| ≤ bound`` that are
    shifted left by ``L`` before the multiply: returns ``(m, shift − L, L)``.

    ``multiply_by_quantized_multiplier(v << L, m, shift − L)`` then rounds only once at
    the output's precision: the high multiply keeps ``R = L − shift`` fraction bits of
    ``v · M`` and the final shift rounds those, so the result differs from the exact
    ``round(v · M)`` only where ``v · M`` lies within ``2^−(R+1)`` (plus ``m``'s own
    2^−31 relative error) of a half-way point. Without the pre-shift (``L = 0``) a
    small sum or product keeps only ``−shift`` fraction bits and rounds twice.

    ``L = 31 − bit_length(bound)``, so ``|v| · 2^L ≤ (2^b − 1) · 2^(31 − b) < 2^31``
    (b = bit_length(bound)): the shifted value is an int32 and the high multiply's
    product stays below 2^62. ``L`` is capped at ``31 + min(shift)`` so the right
    shift ``R`` never exceeds 31 (past that the result is 0 anyway: the high
    multiply's output is below 2^31). One ``L`` serves every element of ``real``.
    A ``bound`` of 2^31 or more is a :class:`FixedPointRangeError`.
    """
    if bound < 0:
        raise ValueError(f"bound must be non-negative, got {bound}")
    if bound > INT32_MAX:
        raise FixedPointRangeError(f"values up to {bound} do not fit the int32 input of the fixed-point multiply")
    m, s = quantize_multiplier(real)
    live = s[m != 0]
    cap = 31 + int(live.min()) if live.size else 31
    pre = max(0, min(31 - int(bound).bit_length(), cap))
    return m, np.asarray(s.astype(np.int64) - pre, dtype=np.int32), pre  # 0-d stays an array, as m


def _srdhm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SaturatingRoundingDoublingHighMul on int64 tensors holding int32 values."""
    ab = a * b
    nudge = torch.where(ab >= 0, torch.full_like(ab, 1 << 30), torch.full_like(ab, 1 - (1 << 30)))
    high = torch.div(ab + nudge, 1 << 31, rounding_mode="trunc")  # C division truncates
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return torch.where(overflow, torch.full_like(high, INT32_MAX), high)


def _rounding_divide_by_pot(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    mask = (torch.ones_like(x) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(x.dtype)
    return (x >> exponent) + (remainder > threshold).to(x.dtype)


def multiply_by_quantized_multiplier(x: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """TFLite ``MultiplyByQuantizedMultiplier`` elementwise (broadcasting), int64 in and out.

    A positive shift is applied before the high multiply, saturating to int32
    (TFLite leaves that overflow undefined; we define it).
    """
    x = x.to(torch.int64)
    m = multiplier.to(torch.int64)
    s = shift.to(torch.int64)
    left = s.clamp(min=0)
    right = (-s).clamp(min=0)
    shifted = (x << left).clamp(INT32_MIN, INT32_MAX)
    return _rounding_divide_by_pot(_srdhm(shifted, m), right)


def requantize(
    acc: torch.Tensor,
    multiplier: torch.Tensor,
    zero_point: torch.Tensor | int,
    qmin: int,
    qmax: int,
    mode: str = "float",
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """int32 accumulators -> int codes (int64 tensor), per-channel along the last dim.

    ``mode="float"``: ``multiplier`` is the real M (float64 used for the product).
    ``mode="fixed"``: ``multiplier`` is the int32 m and ``shift`` its shift.
    """
    if mode == "float":
        y = torch.round(acc.to(torch.float64) * multiplier.to(torch.float64)).to(torch.int64)
    elif mode == "fixed":
        if shift is None:
            raise ValueError("shift is required with mode='fixed'")
        y = multiply_by_quantized_multiplier(acc, multiplier, shift)
    else:
        raise ValueError(f"mode {mode!r} is unknown; expected one of {', '.join(ROUNDING_MODES)}")
    return (y + zero_point).clamp(qmin, qmax)


# ---- plain references: one Python int at a time ---------------------------------------


def srdhm_reference(a: int, b: int) -> int:
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    num = ab + nudge
    q = abs(num) // (1 << 31)
    return q if num >= 0 else -q


def rounding_divide_by_pot_reference(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier_reference(x: int, multiplier: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    shifted = min(max(x * (1 << left), INT32_MIN), INT32_MAX)
    return rounding_divide_by_pot_reference(srdhm_reference(shifted, multiplier), right)


def multiply_pre_shifted_reference(x: int, multiplier: int, shift: int, pre_shift: int) -> int:
    """``x`` widened by ``2^pre_shift`` (it must stay an int32), then
    :func:`multiply_by_quantized_multiplier_reference` with the adjusted ``shift``."""
    widened = x * (1 << pre_shift)
    if not INT32_MIN <= widened <= INT32_MAX:
        raise OverflowError(f"{x} << {pre_shift} leaves int32")
    return multiply_by_quantized_multiplier_reference(widened, multiplier, shift)


def quantize_multiplier_reference(real: float) -> tuple[int, int]:
    if real == 0:
        return 0, 0
    frac, exp = math.frexp(real)
    m = math.floor(frac * 2**31 + 0.5)
    if m == 2**31:
        m //= 2
        exp += 1
    if exp < -31:
        return 0, 0
    return m, exp


def requantize_float_reference(acc: int, multiplier: float, zero_point: int, qmin: int, qmax: int) -> int:
    y = round(float(acc) * float(multiplier))  # Python's round is half to even
    return min(max(y + zero_point, qmin), qmax)
