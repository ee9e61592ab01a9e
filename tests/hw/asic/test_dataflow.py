"""Closed-form fold counts against plain per-fold loops and explicitly built demand matrices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qatlab.hw.asic.dataflow import ArrayMapping, skew_counts

dims = st.integers(1, 40)
arr = st.integers(1, 9)
dataflows = st.sampled_from(["os", "ws", "is"])


def skew(block: np.ndarray) -> np.ndarray:
    """Column c delayed by c rows (-1 = no request), built the obvious way."""
    rows, cols = block.shape
    out = np.full((rows + cols - 1, cols), -1)
    for c in range(cols):
        out[c : c + rows, c] = block[:, c]
    return out


def ofmap_demand(m: ArrayMapping) -> np.ndarray:
    """The ofmap demand rows of every fold, built explicitly (1 = a write, -1 = none)."""
    R, C, T = m.R, m.C, m.T
    folds = []
    for cu in m.col_used():
        for ru in m.row_used():
            if m.dataflow == "os":
                blk = -np.ones((R, C))
                blk[:ru, :cu] = 1
                blk = np.flipud(blk)  # outputs leave at the bottom edge
                folds.append(skew(np.vstack([-np.ones((T - 1, C)), blk])))
            else:
                blk = -np.ones((T, C))
                blk[:, :cu] = 1
                folds.append(skew(np.vstack([-np.ones((2 * R - 1, C)), blk])))
    return np.vstack(folds)


@given(dataflows, arr, arr, dims, dims, dims)
def test_row_counts_equal_explicit_demand_matrices(df, r, c, m_, n_, k_):
    m = ArrayMapping(df, r, c, m_, n_, k_)
    dem = ofmap_demand(m)
    assert dem.shape[0] == m.compute_rows
    per_row = (dem != -1).sum(axis=1)
    np.testing.assert_array_equal(m.ofmap_rows.dense(), per_row)
    rc = m.ofmap_rows
    assert rc.total == int(per_row.sum()) == m_ * n_ * (1 if df == "os" else m.row_fold)
    cum = np.concatenate(([0], np.cumsum(per_row)))
    for row in range(0, len(per_row) + 1, max(1, len(per_row) // 7)):
        assert rc.before(row) == cum[row]
    for g in range(0, rc.total, max(1, rc.total // 9)):
        assert rc.row_of(g) == int(np.searchsorted(cum, g, side="right")) - 1


@given(dataflows, arr, arr, dims, dims, dims)
def test_utilizations_equal_a_plain_per_fold_loop(df, r, c, m_, n_, k_):
    m = ArrayMapping(df, r, c, m_, n_, k_)
    eff, util = [], []
    for cu in m.col_used():  # column folds outer, as SCALE-Sim
        for ru in m.row_used():
            eff.append(int(ru * cu) / (r * c))
            util.append(int(ru * cu) * m.T / (r * c * m.util_cycles_per_fold))
    agg_e = agg_u = 0.0
    for e, u in zip(eff, util):  # left-to-right float sums
        agg_e += e
        agg_u += u
    assert m.mapping_eff_pct == agg_e / len(eff) * 100
    assert m.compute_util_pct == agg_u / len(util) * 100


def test_skew_counts_formula():
    blk = -np.ones((9, 4))
    blk[3:7, :3] = 1
    np.testing.assert_array_equal(skew_counts(12, 3, 6, 3), (skew(blk) != -1).sum(axis=1))


@given(st.integers(0, 40), st.integers(0, 12), st.integers(1, 8), st.integers(0, 30))
def test_skew_counts_equal_the_skewed_block(a, span, width, extra_rows):
    """The range-built counts against skewing an explicit block, row by row."""
    b = a + span
    blk = -np.ones((b + 1, width + 1))
    blk[a : b + 1, :width] = 1
    ref = (skew(blk) != -1).sum(axis=1)
    rows = len(ref) + extra_rows
    assert skew_counts(rows, a, b, width) == list(ref) + [0] * extra_rows


def test_fold_table():
    m = ArrayMapping("ws", 8, 4, 100, 10, 20)  # M, N, K
    assert (m.Sr, m.Sc, m.T, m.row_fold, m.col_fold) == (20, 10, 100, 3, 3)
    assert m.rows_per_fold == 100 + 2 * 8 + 4 - 2
    assert (m.sram_ifmap_reads, m.sram_filter_reads, m.sram_ofmap_writes_corrected) == (3 * 100 * 20, 200, 3 * 1000)
    o = ArrayMapping("os", 8, 4, 100, 10, 20)
    assert (o.Sr, o.Sc, o.T, o.rows_per_fold) == (100, 10, 20, 20 + 8 + 4 - 2)
    i = ArrayMapping("is", 8, 4, 100, 10, 20)
    assert (i.Sr, i.Sc, i.T) == (20, 100, 10)
    with pytest.raises(ValueError):
        ArrayMapping("xs", 1, 1, 1, 1, 1)
    with pytest.raises(ValueError):
        ArrayMapping("os", 0, 1, 1, 1, 1)
