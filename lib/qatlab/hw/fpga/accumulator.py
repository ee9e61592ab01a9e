"""Accumulator widths: how many bits a layer's dot products need, and what a narrower
accumulator does to them.

Bounds, each an exact integer interval turned into a width by FINN's rule
(``MVAU.minimize_accumulator_width``: unsigned if the range is non-negative, else the
smallest two's-complement width holding both ends):

* worst case, from the data types alone: ``MW`` products each in the extreme product
  interval of a W-bit weight and an A-bit input (signed or not). This is what a design
  with run-time-writable weights must provision; it never exceeds ``W + A + ceil(log2 MW)``.
* tight, from the actual integer weights: per output channel, positive weights meet the
  input maximum and negative ones the minimum (and the reverse for the minimum). FINN's
  ``calculate_matvec_accumulator_range`` uses the symmetric ``± max_n Σ|w| · max|x|``;
  ours is the exact per-channel interval, never wider.

The accumulator holds the dot product only: the bias is folded into the thresholds of
the activation (as FINN streamlining does), so it does not widen the accumulator.

A narrower accumulator can be simulated: each cycle the PE adds the full-precision sum
of its SIMD products (the adder tree is wide enough) to the accumulator, which then
either wraps (two's complement, the hardware default) or saturates. Wrapping does not
depend on the order of the additions; saturating does, so it takes the SIMD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AccumulatorOverflowError

ACC_MODES = ("wrap", "saturate")


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def bits_for_range(lo: int, hi: int) -> int:
    """Smallest width holding [lo, hi]: unsigned if lo >= 0, else two's complement."""
    lo, hi = int(lo), int(hi)
    if lo >= 0:
        return max(1, hi.bit_length())
    m = max(-lo, hi + 1)
    return (m - 1).bit_length() + 1


def worst_case_range(mw: int, w_bits: int, a_bits: int, w_signed: bool = True, a_signed: bool = False) -> tuple[int, int]:
    wl, wh = int_range(w_bits, w_signed)
    al, ah = int_range(a_bits, a_signed)
    prods = (wl * al, wl * ah, wh * al, wh * ah)
    return mw * min(prods), mw * max(prods)


def weight_range(weights: np.ndarray, a_bits: int, a_signed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel [MH] exact (min, max) of ``weights @ x`` over all A-bit inputs."""
    al, ah = int_range(a_bits, a_signed)
    w = np.asarray(weights, dtype=np.int64)
    pos = np.clip(w, 0, None)
    neg = np.clip(w, None, 0)
    hi = pos.sum(axis=1) * ah + neg.sum(axis=1) * al
    lo = pos.sum(axis=1) * al + neg.sum(axis=1) * ah
    return lo, hi


@dataclass(frozen=True)
class AccumulatorBits:
    worst: int  # from the data types and the fan-in
    tight: int | None  # from the actual weights (None: weights not given)
    used: int  # what the design implements (tight if known, else worst, unless overridden)
    signed: bool = True  # two's complement (False only when no product can be negative)

    @property
    def overflow_possible(self) -> bool:
        """Whether some input could overflow the implemented width."""
        return self.used < (self.tight if self.tight is not None else self.worst)


def accumulator_bits(
    mw: int,
    w_bits: int,
    a_bits: int,
    *,
    weights: np.ndarray | None = None,
    w_signed: bool = True,
    a_signed: bool = False,
    override: int | None = None,
) -> AccumulatorBits:
    wlo, whi = worst_case_range(mw, w_bits, a_bits, w_signed, a_signed)
    worst = bits_for_range(wlo, whi)
    signed = wlo < 0
    tight = None
    if weights is not None:
        lo, hi = weight_range(weights, a_bits, a_signed)
        tlo, thi = min(int(lo.min()), 0), max(int(hi.max()), 0)
        tight = bits_for_range(tlo, thi)
        signed = tlo < 0
    used = override if override is not None else (tight if tight is not None else worst)
    return AccumulatorBits(worst, tight, used, signed)


def narrow(values: np.ndarray, bits: int, mode: str, signed: bool = True) -> np.ndarray:
    """Bring int64 values into a ``bits``-wide accumulator (two's complement if signed)."""
    lo, hi = int_range(bits, signed)
    if mode == "saturate":
        return np.clip(values, lo, hi)
    if mode == "wrap":
        return ((values - lo) & ((1 << bits) - 1)) + lo
    raise ValueError(f"accumulator mode {mode!r} is not one of {', '.join(ACC_MODES)}")


def accumulate(
    x: np.ndarray,
    w: np.ndarray,
    *,
    simd: int | None = None,
    bits: int | None = None,
    mode: str = "wrap",
    signed: bool = True,
) -> np.ndarray:
    """Dot products ``x [P, MW] @ w[MH, MW]^T`` as a PE's accumulator computes them.

    ``bits=None``: exact (int64). Otherwise a ``bits``-wide signed accumulator that adds
    one SIMD-wide partial sum per cycle and wraps or saturates after each addition.
    """
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    if bits is None:
        return x @ w.T
    if mode == "wrap":
        return narrow(x @ w.T, bits, "wrap", signed)  # modular arithmetic: order does not matter
    if simd is None:
        raise ValueError("a saturating accumulator needs the layer's SIMD (the order of additions)")
    mw = x.shape[1]
    acc = np.zeros((x.shape[0], w.shape[0]), dtype=np.int64)
    for s in range(0, mw, simd):
        acc = narrow(acc + x[:, s : s + simd] @ w[:, s : s + simd].T, bits, "saturate", signed)
    return acc


def check_fits(acc: np.ndarray, bits: int, layer: str, signed: bool = True) -> None:
    """Raise if any exact accumulator value leaves a ``bits``-wide accumulator."""
    lo, hi = int_range(bits, signed)
    if acc.size and (int(acc.min()) < lo or int(acc.max()) > hi):
        raise AccumulatorOverflowError(
            f"layer {layer!r}: accumulator values span [{int(acc.min())}, {int(acc.max())}], "
            f"outside the {bits}-bit {'signed' if signed else 'unsigned'} accumulator [{lo}, {hi}]"
        )
