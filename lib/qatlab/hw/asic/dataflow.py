"""Folding a GEMM onto the array: the closed-form compute counts of the three dataflows.

The layer is the GEMM ``[M, K] x [K, N]`` (M output pixels, K = reduction length,
N filters). SCALE-Sim maps two of the three dimensions spatially (``Sr`` on the rows,
``Sc`` on the columns) and streams the third in time (``T``):

========  ==========  ==========  =========
dataflow  Sr (rows)   Sc (cols)   T (time)
========  ==========  ==========  =========
os        M           N           K
ws        K           N           M
is        K           M           N
========  ==========  ==========  =========

A layer larger than the array is cut into ``row_fold x col_fold`` folds, run one after
the other (column folds outer, row folds inner). Each fold occupies the array for a
fixed number of cycles (the demand-matrix rows of SCALE-Sim), whatever part of the
array it uses:

- os: ``T + R + C - 2`` (inputs skew in over ``R`` rows and ``C`` columns while
  ``T`` products accumulate in place; SCALE-Sim overlaps the output drain with the
  next fold's fill);
- ws / is: ``T + 2R + C - 2`` (``R`` cycles to load the stationary tile, ``R - 1``
  to skew the streamed operand across the rows, ``C - 1`` for the last partial sum
  to leave the last column).

"Total Cycles" in SCALE-Sim is the index of the last cycle: ``folds * per_fold - 1``
plus memory stalls. The cycle-stepped model (:mod:`qatlab.hw.asic.stepped`) moves real
operands through a grid and finishes each fold in exactly ``per_fold`` cycles.

Pure Python (no numpy): the closed forms cost O(folds) integer operations, and
importing numpy would dominate a command-line run's time.
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property, reduce
from itertools import accumulate


@dataclass(frozen=True)
class ArrayMapping:
    """One GEMM ``(M, N, K)`` folded onto an ``R x C`` array with a dataflow."""

    dataflow: str
    # Upper-case names as in the literature: array rows/cols R, C and GEMM sizes M, N, K.
    R: int
    C: int
    M: int
    N: int
    K: int

    def __post_init__(self) -> None:
        for f in ("R", "C", "M", "N", "K"):  # numpy integers are accepted; store Python ints
            v = getattr(self, f)
            if hasattr(type(v), "__index__") and not isinstance(v, (int, bool)):
                object.__setattr__(self, f, operator.index(v))
        if self.dataflow not in ("os", "ws", "is"):
            raise ValueError(f"dataflow must be os, ws or is; got {self.dataflow!r}")
        for f in ("R", "C", "M", "N", "K"):
            v = getattr(self, f)
            if isinstance(v, bool) or not hasattr(type(v), "__index__") or v < 1:
                raise ValueError(f"{f} must be a positive integer, got {v!r}")

    # ---- geometry ------------------------------------------------------------------
    @property
    def Sr(self) -> int:
        return {"os": self.M, "ws": self.K, "is": self.K}[self.dataflow]

    @property
    def Sc(self) -> int:
        return {"os": self.N, "ws": self.N, "is": self.M}[self.dataflow]

    @property
    def T(self) -> int:
        return {"os": self.K, "ws": self.M, "is": self.N}[self.dataflow]

    @property
    def row_fold(self) -> int:
        return -(-self.Sr // self.R)

    @property
    def col_fold(self) -> int:
        return -(-self.Sc // self.C)

    @property
    def folds(self) -> int:
        return self.row_fold * self.col_fold

    @property
    def rows_per_fold(self) -> int:
        """Cycles one fold occupies the array (SCALE-Sim's demand-matrix rows per fold)."""
        if self.dataflow == "os":
            return self.T + self.R + self.C - 2
        return self.T + 2 * self.R + self.C - 2

    @property
    def util_cycles_per_fold(self) -> int:
        """The per-fold cycle count SCALE-Sim divides by for "Compute Util %".

        It is the fold's demand block height plus its width minus one, measured on the
        ofmap block for os (``T + R + C - 2``) but on the filter (ws) or ifmap (is) block
        for the other two, which already carry the column skew: ``T + 2R + 2C - 3``, one
        column skew more than the fold actually takes. Reproduced as is.
        """
        if self.dataflow == "os":
            return self.T + self.R + self.C - 2
        return self.T + 2 * self.R + 2 * self.C - 3

    @property
    def compute_rows(self) -> int:
        """Stall-free cycles of the layer (SCALE-Sim's "Total Cycles" is this minus one)."""
        return self.folds * self.rows_per_fold

    def row_used(self) -> list[int]:
        """Array rows used by each row fold."""
        return [self.R] * (self.row_fold - 1) + [self.Sr - self.R * (self.row_fold - 1)]

    def col_used(self) -> list[int]:
        """Array columns used by each column fold."""
        return [self.C] * (self.col_fold - 1) + [self.Sc - self.C * (self.col_fold - 1)]

    # ---- utilization (SCALE-Sim averages per-fold figures) ---------------------------
    def _per_fold_mean(self, scale: int, den: int) -> float:
        """Mean over folds of ``macs * scale / den``, rounded as SCALE-Sim rounds it.

        SCALE-Sim adds the per-fold floats left to right (not pairwise, not compensated:
        Python >= 3.12's ``sum`` would differ in the last digits), each the float
        quotient of two floats. Fold order: column folds outer, row folds inner.
        """
        fden = float(den)
        ru, cu = self.row_used(), self.col_used()
        # Only the last column fold can differ: build the two column patterns once and
        # repeat them by list product, so the per-fold work is the additions alone.
        first = [float(cu[0] * r * scale) / fden for r in ru]
        last = [float(cu[-1] * r * scale) / fden for r in ru]
        total = reduce(operator.add, first * (len(cu) - 1) + last, 0.0)
        return total / self.folds

    @property
    def mapping_eff_pct(self) -> float:
        """Mean over folds of the fraction of PEs holding work."""
        return self._per_fold_mean(1, self.R * self.C) * 100

    @property
    def compute_util_pct(self) -> float:
        """Mean over folds of MACs / (PEs x fold cycles), SCALE-Sim's definition."""
        return self._per_fold_mean(self.T, self.R * self.C * self.util_cycles_per_fold) * 100

    # ---- SRAM traffic (words) --------------------------------------------------------
    @property
    def sram_ifmap_reads(self) -> int:
        # os/ws stream the whole ifmap once per column fold; is holds each ifmap word once.
        if self.dataflow == "is":
            return self.M * self.K
        return self.col_fold * self.M * self.K

    @property
    def sram_filter_reads(self) -> int:
        if self.dataflow == "ws":
            return self.K * self.N
        if self.dataflow == "os":
            return self.row_fold * self.K * self.N
        return self.col_fold * self.K * self.N

    @property
    def sram_ofmap_writes_corrected(self) -> int:
        """Output words written: once per output for os; ws/is write a partial sum per row fold."""
        if self.dataflow == "os":
            return self.M * self.N
        return self.row_fold * self.M * self.N

    @property
    def sram_ofmap_writes_scalesim(self) -> int:
        """SCALE-Sim 3.0.0's count. For os it adds ``R + C`` phantom writes per fold.

        Its output-stationary compute model increments the write counter a second time
        with the fold's *shape* (``rows + cols`` of the padded block) instead of its
        size, so every fold reports ``R + C`` writes that never happen.
        """
        if self.dataflow == "os":
            return self.M * self.N + self.folds * (self.R + self.C)
        return self.sram_ofmap_writes_corrected

    @property
    def sram_psum_reads(self) -> int:
        """Partial sums read back to accumulate across row folds (ws/is); SCALE-Sim omits them."""
        if self.dataflow == "os":
            return 0
        return (self.row_fold - 1) * self.M * self.N

    # ---- where each operand's first request falls (SCALE-Sim's demand layout) --------
    @property
    def first_ifmap_row(self) -> int:
        if self.dataflow == "os":
            return 0
        if self.dataflow == "ws":
            return self.R  # after the R weight-load cycles
        return self.R - min(self.R, self.Sr)  # flipped, bottom-padded first fold

    @property
    def first_filter_row(self) -> int:
        if self.dataflow == "os":
            return 0
        if self.dataflow == "ws":
            return self.R - min(self.R, self.Sr)
        return self.R

    # ---- the ofmap write stream, for the write-buffer model --------------------------
    @cached_property
    def ofmap_rows(self) -> "RowCounts":
        """How many output words each demand row writes, for every fold."""
        return RowCounts.for_mapping(self)

    # ---- prefetch-matrix sizes (SCALE-Sim's USER-mode read buffers) -------------------
    @property
    def ifmap_prefetch_entries(self) -> int:
        """Words (padding included) of the ifmap prefetch matrix SCALE-Sim builds."""
        if self.dataflow == "os":
            return self.row_fold * self.K * self.R
        if self.dataflow == "ws":
            return self.row_fold * self.M * self.R
        return self.col_fold * self.K * self.C

    @property
    def filter_prefetch_entries(self) -> int:
        if self.dataflow == "os":
            return self.col_fold * self.K * self.C
        if self.dataflow == "ws":
            return self.col_fold * self.K * self.C
        return self.row_fold * self.N * self.R


def skew_counts(rows: int, a: int, b: int, width: int) -> list[int]:
    """Valid entries per row of a skewed block (SCALE-Sim's ``skew_matrix``).

    The unskewed block has valid rows ``a..b`` (inclusive) in its first ``width``
    columns; column ``c`` is delayed by ``c`` rows. Returns counts for skewed rows
    ``0..rows-1``: ``#{c < width : a <= j - c <= b}``.
    """
    # The count is F(j - a) - F(j - b - 1) with F(x) = #{c < width : c <= x}, a clamped
    # ramp; building both ramps from ranges keeps the per-row work in C (rows can number
    # tens of thousands per fold shape).
    return list(map(operator.sub, _clamped_ramp(-a, rows, width), _clamped_ramp(-b - 1, rows, width)))


def _clamped_ramp(start: int, n: int, width: int) -> list[int]:
    """``min(max(x + 1, 0), width)`` for ``x = start .. start + n - 1``."""
    end = start + n
    zeros = max(0, min(end, 0) - start)
    ramp = range(max(start, 0) + 1, min(end, width) + 1)
    flat = max(0, end - max(start, width))
    return [0] * zeros + list(ramp) + [width] * flat


class RowCounts:
    """Per-row counts of a concatenation of folds, with O(log) prefix queries.

    A layer has up to four distinct fold shapes (full/partial rows x full/partial
    columns), so per-row counts are stored once per shape and the fold sequence as a
    cumulative sum: even a 4x4 array folding a large layer a million times costs a few
    megabytes, never one array entry per cycle.
    """

    def __init__(self, rows_per_fold: int, profiles: list[list[int]], fold_type: list[int]) -> None:
        self.rows_per_fold = rows_per_fold
        self.num_rows = rows_per_fold * len(fold_type)
        self._prof = [list(accumulate(p, initial=0)) for p in profiles]
        self._type = fold_type
        totals = [p[-1] for p in self._prof]
        self._fold_cum = list(accumulate((totals[t] for t in fold_type), initial=0))
        self.total = self._fold_cum[-1]

    @classmethod
    def for_mapping(cls, m: ArrayMapping) -> "RowCounts":
        rpf = m.rows_per_fold
        ru, cu = m.row_used(), m.col_used()
        # Fold order: column folds outer, row folds inner. Only the last row fold and
        # the last column fold can be partial, so a fold's shape is (first-or-last row
        # size, first-or-last column size): four kinds at most.
        kind = [(c != cu[0]) * 2 + (r != ru[0]) for c in cu for r in ru]
        profiles = []
        for c in (cu[0], cu[-1]):
            for r in (ru[0], ru[-1]):
                if m.dataflow == "os":
                    # T-1 idle rows, then the R x C block flipped upside down (outputs leave
                    # at the bottom edge, so padding rows come first), then the column skew.
                    profiles.append(skew_counts(rpf, m.T - 1 + m.R - r, m.T - 1 + m.R - 1, c))
                else:
                    # 2R-1 idle rows (weights load, inputs skew in), then T rows of outputs
                    # over the used columns, skewed; the row fold does not change the shape.
                    profiles.append(skew_counts(rpf, 2 * m.R - 1, 2 * m.R - 2 + m.T, c))
        return cls(rpf, profiles, kind)

    def before(self, row: int) -> int:
        """Entries in rows ``< row``."""
        if row >= self.num_rows:
            return self.total
        f, j = divmod(row, self.rows_per_fold)
        return int(self._fold_cum[f] + self._prof[self._type[f]][j])

    def row_of(self, g: int) -> int:
        """The row holding entry number ``g`` (0-based, ``g < total``)."""
        f = bisect_right(self._fold_cum, g) - 1
        within = g - self._fold_cum[f]
        j = bisect_right(self._prof[self._type[f]], within) - 1
        return f * self.rows_per_fold + j

    def dense(self) -> list[int]:
        """All per-row counts (tests and small layers only)."""
        diffs = [[b - a for a, b in zip(p, p[1:])] for p in self._prof]
        return [c for t in self._type for c in diffs[t]]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["ArrayMapping", "RowCounts", "skew_counts", "ceil_div"]
