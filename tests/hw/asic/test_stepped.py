"""The cycle-stepped array against plain integer arithmetic and against the closed form."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qatlab.hw.asic import ArrayConfig, ArrayMapping, simulate_layer
from qatlab.hw.asic.stepped import conv_reference, im2col, kept_positions, run_conv, run_gemm
from qatlab.hw.workload import Layer

dataflows = st.sampled_from(["os", "ws", "is"])


@st.composite
def gemms(draw):
    m, n, k = (draw(st.integers(1, 24)) for _ in range(3))
    r, c = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    return m, n, k, r, c, seed


def int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-128, 128, shape).astype(np.int8)


@given(gemms(), dataflows, st.integers(1, 3))
def test_gemm_bit_exact_and_cycles_equal_closed_form(g, df, pack):
    m, n, k, r, c, seed = g
    rng = np.random.default_rng(seed)
    a, b = int8(rng, (m, k)), int8(rng, (k, n))
    res = run_gemm(a, b, r, c, df, pack)
    ref = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    np.testing.assert_array_equal(res.out, ref)
    mp = ArrayMapping(df, r, c, m, n, -(-k // pack))
    assert res.cycles == mp.compute_rows
    assert res.fold_cycles == [mp.rows_per_fold] * mp.folds
    # The words the stepped array actually moves are the closed form's (corrected) counts.
    assert res.sram_ifmap_reads == mp.sram_ifmap_reads
    assert res.sram_filter_reads == mp.sram_filter_reads
    assert res.sram_ofmap_writes == mp.sram_ofmap_writes_corrected
    assert res.sram_psum_reads == mp.sram_psum_reads


@given(
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(1, 3),
    dataflows,
    st.integers(0, 2**32 - 1),
)
def test_conv_bit_exact_and_cycles_match_the_layer_record(extra, fh, stride, ch, nf, arr, df, seed):
    rng = np.random.default_rng(seed)
    h = w = fh + extra * stride
    x, wt = int8(rng, (h, w, ch)), int8(rng, (fh, fh, ch, nf))
    res = run_conv(x, wt, arr + 1, arr + 2, df, stride)
    np.testing.assert_array_equal(res.out, conv_reference(x, wt, stride, stride))
    layer = Layer("c", h, w, fh, fh, ch, nf, stride, stride)
    cfg = ArrayConfig(rows=arr + 1, cols=arr + 2, dataflow=df, ifmap_sram_kb=64, filter_sram_kb=64, ofmap_sram_kb=64)
    rec = simulate_layer(layer, cfg)
    assert res.cycles == rec.cycles - rec.stall_cycles
    assert res.sram_ofmap_writes == rec.sram_ofmap_writes_corrected
    if (h - fh) % stride == 0:  # SCALE-Sim's geometry is the real one: its named fields agree too
        assert res.cycles == rec.total_cycles + 1 - rec.stall_cycles
        assert res.sram_ifmap_reads == rec.sram_ifmap_reads


def test_scalesim_os_ofmap_write_count_is_inflated_by_rows_plus_cols_per_fold():
    rng = np.random.default_rng(0)
    a, b = int8(rng, (10, 7)), int8(rng, (7, 9))
    res = run_gemm(a, b, 4, 4, "os")
    mp = ArrayMapping("os", 4, 4, 10, 9, 7)
    assert res.sram_ofmap_writes == 10 * 9 == mp.sram_ofmap_writes_corrected
    assert mp.sram_ofmap_writes_scalesim == 10 * 9 + mp.folds * (4 + 4)


def test_sparse_conv_skips_zero_weights_and_stays_exact():
    rng = np.random.default_rng(1)
    x = int8(rng, (6, 6, 8))
    wt = int8(rng, (3, 3, 8, 5))
    flat = wt.reshape(-1, 5)
    keep = kept_positions(flat.shape[0], 2, 4)
    mask = np.zeros(flat.shape[0], bool)
    mask[keep] = True
    flat[~mask] = 0
    wt = flat.reshape(wt.shape)
    dense = run_conv(x, wt, 4, 4, "ws")
    sparse = run_conv(x, wt, 4, 4, "ws", sparsity=(2, 4))
    np.testing.assert_array_equal(sparse.out, conv_reference(x, wt))
    np.testing.assert_array_equal(dense.out, sparse.out)
    assert sparse.cycles < dense.cycles
    assert sparse.sram_filter_reads == dense.sram_filter_reads // 2
    flat[2] = 1  # 2:4 keeps positions 0, 1 of each block of 4: position 2 must be zero
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        run_conv(x, flat.reshape(wt.shape), 4, 4, "ws", sparsity=(2, 4))


def test_packing_halves_the_reduction_cycles_and_stays_exact():
    rng = np.random.default_rng(2)
    a = rng.integers(-8, 8, (12, 40)).astype(np.int8)  # 4-bit operands
    b = rng.integers(-8, 8, (40, 6)).astype(np.int8)
    one, two = run_gemm(a, b, 4, 4, "os", 1), run_gemm(a, b, 4, 4, "os", 2)
    np.testing.assert_array_equal(one.out, two.out)
    assert (one.cycles - two.cycles) == ArrayMapping("os", 4, 4, 12, 6, 20).folds * 20
    assert two.macs == one.macs


def test_im2col_order_and_errors():
    x = np.arange(4 * 4 * 2).reshape(4, 4, 2)
    cols = im2col(x, 2, 2)
    # K index = (kh * fw + kw) * C + c, SCALE-Sim's order
    assert list(cols[0]) == [x[0, 0, 0], x[0, 0, 1], x[0, 1, 0], x[0, 1, 1], x[1, 0, 0], x[1, 0, 1], x[1, 1, 0], x[1, 1, 1]]
    with pytest.raises(ValueError, match="larger"):
        im2col(x, 5, 1)
    with pytest.raises(ValueError, match="multiply"):
        run_gemm(np.zeros((2, 3), np.int8), np.zeros((2, 3), np.int8), 2, 2, "os")
    with pytest.raises(TypeError):
        run_gemm(np.zeros((2, 3)), np.zeros((3, 3)), 2, 2, "os")


def test_accumulator_wraps_like_int32_hardware():
    a = np.full((1, 300), 127, np.int16)
    b = np.full((300, 1), 127 * 200, np.int16)
    res = run_gemm(a, b, 2, 2, "ws")
    want = np.array([[127 * 127 * 200 * 300]], dtype=np.int64).astype(np.int32)
    np.testing.assert_array_equal(res.out, want)
