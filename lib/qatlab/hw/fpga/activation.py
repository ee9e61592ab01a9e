"""The activation of a layer: requantizing the accumulator to the next layer's codes.

Integer semantics (the reference): ``y = clamp(round_half_even((acc + bias) · M) + z,
qmin, qmax)`` with ``(acc + bias) · M`` computed in float64, exactly the ``float``
rounding path of :mod:`qatlab.quant.requant` (and of the IntModel's CPU reference).

Hardware semantics (what FINN builds, and what the stepped simulation runs): a
multi-threshold unit, ``y = qmin + #{l : acc >= T_l}``, one threshold per output level
above qmin. Because ``y`` is non-decreasing in ``acc`` (M >= 0; rounding and clamping
are monotone), the two are equal for every integer ``acc`` when ``T_l`` is the smallest
accumulator value whose requantized code reaches ``l``. :func:`thresholds` finds those
exactly (a float estimate, then integer fix-up against the float64 definition).
"""

from __future__ import annotations

import numpy as np

# Thresholds beyond any reachable accumulator: "always" and "never". Exact for
# |acc| < 2^49, far past any accumulator a design would build.
NEVER = 1 << 62
ALWAYS = -(1 << 62)
_EXACT_LIMIT = 1 << 50


def requantize(acc: np.ndarray, multiplier: np.ndarray, bias: np.ndarray | None, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """Per output channel (last axis): ``clamp(rint((acc + bias) · M) + z, qmin, qmax)``."""
    a = np.asarray(acc, dtype=np.int64)
    if bias is not None:
        a = a + np.asarray(bias, dtype=np.int64)
    y = np.rint(a.astype(np.float64) * np.asarray(multiplier, dtype=np.float64))
    return np.clip(y + zero_point, qmin, qmax).astype(np.int64)


def _level_reached(a: np.ndarray, m: np.ndarray, b: np.ndarray, z: int) -> np.ndarray:
    # The unclamped code of accumulator a; comparisons against levels in (qmin, qmax]
    # need no clamp.
    return np.rint((a + b).astype(np.float64) * m) + z


def thresholds(multiplier: np.ndarray, bias: np.ndarray | None, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """Thresholds ``T [MH, qmax - qmin]`` (int64) with, for every integer ``acc``,
    ``requantize(acc) == qmin + sum(acc >= T[n])``."""
    m = np.asarray(multiplier, dtype=np.float64).reshape(-1)
    if np.any(~np.isfinite(m)) or np.any(m < 0):
        raise ValueError("requantization multipliers must be finite and non-negative")
    mh = m.shape[0]
    b = np.zeros(mh, dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64).reshape(-1)
    levels = np.arange(qmin + 1, qmax + 1, dtype=np.int64)  # level l is reached at T[:, l - qmin - 1]
    n_lv = levels.shape[0]
    mm = np.repeat(m[:, None], n_lv, axis=1)
    bb = np.repeat(b[:, None], n_lv, axis=1)
    ll = np.broadcast_to(levels[None, :], (mh, n_lv))
    out = np.empty((mh, n_lv), dtype=np.int64)
    zero = mm == 0
    # M = 0: the code is z whatever the accumulator: reached always or never.
    out[zero] = np.where(ll[zero] <= zero_point, ALWAYS, NEVER)
    nz = ~zero
    if np.any(nz):
        m_, b_, l_ = mm[nz], bb[nz], ll[nz]
        with np.errstate(over="ignore", divide="ignore"):
            est = np.ceil((l_ - zero_point - 0.5) / m_) - b_  # float estimate of the crossing
        far_hi = est >= _EXACT_LIMIT  # past any accumulator: never reached
        far_lo = est <= -_EXACT_LIMIT  # always reached
        near = ~(far_hi | far_lo)
        a = np.where(near, est, 0).astype(np.int64)
        mn, bn, ln = m_[near], b_[near], l_[near]
        an = a[near]
        # Fix up against the exact float64 definition: T is the least a with code(a) >= l.
        for _ in range(64):
            down = _level_reached(an - 1, mn, bn, zero_point) >= ln
            up = _level_reached(an, mn, bn, zero_point) < ln
            if not (down.any() or up.any()):
                break
            an = an - down.astype(np.int64) + up.astype(np.int64)
        else:  # pragma: no cover - the estimate is within a few units of the crossing
            raise ArithmeticError("threshold search did not converge")
        a[near] = an
        a = np.where(far_hi, NEVER, np.where(far_lo, ALWAYS, a))
        out[nz] = a
    return out


def apply_thresholds(acc: np.ndarray, thr: np.ndarray, qmin: int) -> np.ndarray:
    """``qmin + #{l : acc >= T_l}`` per output channel (acc [..., MH], thr [MH, L])."""
    a = np.asarray(acc, dtype=np.int64)
    return qmin + (a[..., None] >= thr).sum(axis=-1).astype(np.int64)
