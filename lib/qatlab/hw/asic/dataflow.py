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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


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
        if self.dataflow not in ("os", "ws", "is"):
            raise ValueError(f"dataflow must be os, ws or is; got {self.dataflow!r}")
        for f in ("R", "C", "M", "N", "K"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or v < 1:
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

    def row_used(self) -> np.ndarray:
        """Array rows used by each row fold."""
        u = np.full(self.row_fold, self.R, dtype=np.int64)
        u[-1] = self.Sr - self.R * (self.row_fold - 1)
        return u

    def col_used(self) -> np.ndarray:
        """Array columns used by each column fold."""
        u = np.full(self.col_fold, self.C, dtype=np.int64)
        u[-1] = self.Sc - self.C * (self.col_fold - 1)
        return u

    # ---- utilization (SCALE-Sim averages per-fold figures) ---------------------------
    def _per_fold_macs(self) -> np.ndarray:
        # Fold order: column folds outer, row folds inner.
        return np.outer(self.col_used(), self.row_used()).ravel()

    @staticmethod
    def _sequential_mean(values: np.ndarray) -> float:
        # SCALE-Sim adds per-fold floats left to right (Python's sum on a list); cumsum
        # adds in the same order, so the result is identical to the last bit (np.sum
        # would sum pairwise and differ in the last digits).
        return float(np.cumsum(values)[-1]) / len(values)

    @property
    def mapping_eff_pct(self) -> float:
        """Mean over folds of the fraction of PEs holding work."""
        return self._sequential_mean(self._per_fold_macs() / (self.R * self.C)) * 100

    @property
    def compute_util_pct(self) -> float:
        """Mean over folds of MACs / (PEs x fold cycles), SCALE-Sim's definition."""
        den = self.R * self.C * self.util_cycles_per_fold
        return self._sequential_mean(self._per_fold_macs() * self.T / den) * 100

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


def skew_counts(rows: int, a: int, b: int, width: int) -> np.ndarray:
    """Valid entries per row of a skewed block (SCALE-Sim's ``skew_matrix``).

    The unskewed block has valid rows ``a..b`` (inclusive) in its first ``width``
    columns; column ``c`` is delayed by ``c`` rows. Returns counts for skewed rows
    ``0..rows-1``: ``#{c < width : a <= j - c <= b}``.
    """
    j = np.arange(rows, dtype=np.int64)
    hi = np.minimum(width - 1, j - a)
    lo = np.maximum(0, j - b)
    return np.maximum(0, hi - lo + 1)


class RowCounts:
    """Per-row counts of a concatenation of folds, with O(log) prefix queries.

    A layer has up to four distinct fold shapes (full/partial rows x full/partial
    columns), so per-row counts are stored once per shape and the fold sequence as a
    cumulative sum: even a 4x4 array folding a large layer a million times costs a few
    megabytes, never one array entry per cycle.
    """

    def __init__(self, rows_per_fold: int, profiles: list[np.ndarray], fold_type: np.ndarray) -> None:
        self.rows_per_fold = rows_per_fold
        self.num_rows = rows_per_fold * len(fold_type)
        self._prof = [np.concatenate(([0], np.cumsum(p))) for p in profiles]
        self._type = fold_type
        totals = np.array([p[-1] for p in self._prof], dtype=np.int64)[fold_type]
        self._fold_cum = np.concatenate(([0], np.cumsum(totals)))
        self.total = int(self._fold_cum[-1])

    @classmethod
    def for_mapping(cls, m: ArrayMapping) -> "RowCounts":
        rpf = m.rows_per_fold
        ru, cu = m.row_used(), m.col_used()
        # Fold order: column folds outer, row folds inner. Only the last row fold and
        # the last column fold can be partial, so a fold's shape is (first-or-last row
        # size, first-or-last column size): four kinds at most.
        fold_r = np.tile(ru, m.col_fold)
        fold_c = np.repeat(cu, m.row_fold)
        kind = (fold_c != cu[0]).astype(np.int64) * 2 + (fold_r != ru[0]).astype(np.int64)
        profiles = []
        for c in (int(cu[0]), int(cu[-1])):
            for r in (int(ru[0]), int(ru[-1])):
                if m.dataflow == "os":
                    # T-1 idle rows, then the R x C block flipped upside down (outputs leave
                    # at the bottom edge, so padding rows come first), then the column skew.
                    profiles.append(skew_counts(rpf, m.T - 1 + m.R - r, m.T - 1 + m.R - 1, c))
                else:
                    # 2R-1 idle rows (weights load, inputs skew in), then T rows of outputs
                    # over the used columns, skewed; the row fold does not change the shape.
                    profiles.append(skew_counts(rpf, 2 * m.R - 1, 2 * m.R - 2 + m.T, c))
        fold_type = kind
        return cls(rpf, profiles, fold_type.astype(np.int64))

    def before(self, row: int) -> int:
        """Entries in rows ``< row``."""
        if row >= self.num_rows:
            return self.total
        f, j = divmod(row, self.rows_per_fold)
        return int(self._fold_cum[f] + self._prof[self._type[f]][j])

    def row_of(self, g: int) -> int:
        """The row holding entry number ``g`` (0-based, ``g < total``)."""
        f = int(np.searchsorted(self._fold_cum, g, side="right")) - 1
        within = g - int(self._fold_cum[f])
        j = int(np.searchsorted(self._prof[self._type[f]], within, side="right")) - 1
        return f * self.rows_per_fold + j

    def dense(self) -> np.ndarray:
        """All per-row counts (tests and small layers only)."""
        return np.concatenate([np.diff(self._prof[t]) for t in self._type]) if len(self._type) else np.zeros(0, np.int64)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["ArrayMapping", "RowCounts", "skew_counts", "ceil_div"]
