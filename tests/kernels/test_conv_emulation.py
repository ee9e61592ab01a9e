"""Thread-level numpy emulations of the two convolution kernels' index arithmetic.

No GPU needed. For int8_conv2d_igemm.cu the test replays what every thread's formulas
do: the per-CTA row table (output pixel -> input origin), the decomposition of the
reduction index into (r, s, c) once per thread and K tile, the gather of each chunk
(cp.async of 16 or 4 bytes, or a byte) from NHWC with the pad code for out-of-image
taps, the weight loads, the STAGES ring, and (for some shapes, lane by lane) the
tensor-core tiles and epilogue stores; the ring, the rasterization and the warp-level
steps are test_mma_emulation.py's, as the two kernels share them (qatlab_mma_tile.cuh).
For int8_conv2d_direct.cu it replays the patch + halo staging, the filter slice and the
per-thread dot products. On the way it asserts what the CUDA code only
assumes: each chunk stays inside one pixel's channels, cp.async sources and shared
destinations are aligned, shared indices stay inside their tiles, and 32-bit offsets
do not overflow. Both must equal the CPU twin exactly.

The constants and formulas mirror the .cu files line by line; change them together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from qatlab.kernels import int8_conv2d_ref, int8_conv2d_requant_ref
from qatlab.kernels.cupy_backend import MMA_BK as BK
from qatlab.kernels.cupy_backend import MMA_BM as BM
from qatlab.kernels.cupy_backend import MMA_BN as BN
from qatlab.kernels.cupy_backend import MMA_LDS as LDS
from qatlab.kernels.cupy_backend import MMA_STAGES as STAGES
from qatlab.kernels.cupy_backend import MMA_THREADS as THREADS
from qatlab.kernels.cupy_conv import (
    DIRECT_THREADS,
    DIRECT_TILE_H,
    DIRECT_TILE_K,
    DIRECT_TILE_W,
    IGEMM_K_ALIGN,
    direct_smem_bytes,
    direct_vec,
    igemm_vec,
)
from qatlab.kernels.validate import check_conv_operands
from tests.kernels.test_mma_emulation import cta_tile_mma, cta_tile_store, grouped_cta_tile, pipeline

I32 = 2**31


@dataclass
class Shape:  # ConvShape of int8_conv2d_igemm.cu
    H: int
    W: int
    C: int
    K: int
    S: int
    OH: int
    OW: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    M: int
    Kg: int
    Kp: int


def _i32(v: np.ndarray | int) -> None:
    assert np.all(np.abs(np.asarray(v, dtype=np.int64)) < I32), "32-bit offset overflow"


def row_table(p: Shape, m0: int) -> np.ndarray:
    """rowinfo[BM] = (ih0, iw0, off0), as the threads tid < BM write it."""
    ri = np.zeros((BM, 3), np.int64)
    m = m0 + np.arange(BM)
    ri[:, 0] = ri[:, 1] = -(1 << 30)
    ok = m < p.M
    n = m // (p.OH * p.OW)
    pix = m - n * (p.OH * p.OW)
    oh = pix // p.OW
    ow = pix - oh * p.OW
    ih0, iw0 = oh * p.sh - p.ph, ow * p.sw - p.pw
    off0 = ((n * p.H + ih0) * p.W + iw0) * p.C
    _i32(off0[ok])
    ri[ok, 0], ri[ok, 1], ri[ok, 2] = ih0[ok], iw0[ok], off0[ok]
    return ri


def load_a_tile(smem: np.ndarray, a_off: int, X: np.ndarray, ri: np.ndarray, p: Shape, k0: int, vec: int, pad: int) -> None:
    cpr = BK // vec
    rpp = THREADS // cpr
    tid = np.arange(THREADS)
    col = (tid % cpr) * vec
    kk = k0 + col
    r = kk // (p.S * p.C)  # C++ '/' truncates; every operand here is >= 0
    rem = kk - r * (p.S * p.C)
    s = rem // p.C
    c = rem - s * p.C
    dih, diw = r * p.dh, s * p.dw
    tap = (dih * p.W + diw) * p.C + c
    kin = kk < p.Kg
    for i in range(BM // rpp):
        row = tid // cpr + i * rpp
        ih, iw = ri[row, 0] + dih, ri[row, 1] + diw
        inside = kin & (ih >= 0) & (ih < p.H) & (iw >= 0) & (iw < p.W)
        dst = a_off + row * LDS + col
        src = ri[row, 2] + tap
        assert np.all(dst % vec == 0), "unaligned shared destination"
        assert np.all(c[inside] + vec <= p.C), "a chunk straddles two pixels / taps"
        assert np.all(src[inside] % vec == 0), "unaligned cp.async source"
        assert np.all((src[inside] >= 0) & (src[inside] + vec <= X.size)), "read outside x"
        _i32(src[inside])
        for j in range(vec):
            smem[dst + j] = np.where(inside, X[np.where(inside, src + j, 0)], np.int8(pad))


def load_b_tile(smem: np.ndarray, b_off: int, B: np.ndarray, p: Shape, n0: int, k0: int) -> None:
    for i in range(2):
        cidx = np.arange(THREADS) + i * THREADS
        row, col = cidx >> 2, (cidx & 3) * 16
        k = k0 + col
        for rr, cc, kx in zip(row, col, k):
            ok = (n0 + rr < p.K) and kx < p.Kp
            smem[b_off + rr * LDS + cc : b_off + rr * LDS + cc + 16] = B[n0 + rr, kx : kx + 16] if ok else 0


def emulate_igemm(x: np.ndarray, w: np.ndarray, stride: tuple, padding: tuple, dilation: tuple, pad: int, lanes: bool) -> np.ndarray:
    """The kernel's int32 output [N, OH, OW, K] (the launcher's weight padding included)."""
    g = check_conv_operands(x, w, stride, padding, dilation, 1, pad)
    m_rows, n_cols, kg = g.gemm_mnk
    vec = igemm_vec(g.c)
    kp = -(-kg // IGEMM_K_ALIGN) * IGEMM_K_ALIGN
    B = np.zeros((n_cols, kp), np.int8)  # what _launch_igemm hands the kernel
    B[:, :kg] = w.reshape(n_cols, kg)
    X = x.reshape(-1)
    p = Shape(g.h, g.w, g.c, g.k, g.s, g.oh, g.ow, *g.stride, *g.padding, *g.dilation, m_rows, kg, kp)
    Y = np.full((m_rows, n_cols), -999999, np.int64)  # poison: every output must be written
    ktiles = (kp + BK - 1) // BK
    grid_m, grid_n = (m_rows + BM - 1) // BM, (n_cols + BN - 1) // BN
    for by in range(grid_n):
        for bx in range(grid_m):
            bm, bn = grouped_cta_tile(bx, by, grid_m, grid_n)
            m0, n0 = bm * BM, bn * BN
            ri = row_table(p, m0)
            smem = np.full(STAGES * (BM + BN) * LDS, 77, np.int8)  # garbage, incl. the pad bytes

            def load(stage: int, t: int) -> None:
                a_off = stage * (BM + BN) * LDS
                load_a_tile(smem, a_off, X, ri, p, t * BK, vec, pad)
                load_b_tile(smem, a_off + BM * LDS, B, p, n0, t * BK)

            if lanes:  # ldmatrix fragments, mma and the epilogue's store coordinates
                acc = np.zeros((8, 4, 4, 32, 4), np.int64)
                pipeline(ktiles, load, lambda As: cta_tile_mma(smem, acc, As))
                cta_tile_store(Y, acc, m0, n0)
                continue
            acc = np.zeros((BM, BN), np.int64)

            def tile_matmul(As: int) -> None:  # the CTA tile's product, without the lanes
                a = smem[As : As + BM * LDS].reshape(BM, LDS)[:, :BK].astype(np.int64)
                b = smem[As + BM * LDS : As + (BM + BN) * LDS].reshape(BN, LDS)[:, :BK].astype(np.int64)
                acc[...] += a @ b.T

            pipeline(ktiles, load, tile_matmul)
            rows, cols = min(BM, m_rows - m0), min(BN, n_cols - n0)
            Y[m0 : m0 + rows, n0 : n0 + cols] = acc[:rows, :cols]
    return Y.reshape(g.out_shape)


def emulate_direct(x: np.ndarray, w: np.ndarray, stride: tuple, padding: tuple, dilation: tuple, pad: int) -> np.ndarray:
    g = check_conv_operands(x, w, stride, padding, dilation, 1, pad)
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    H, W, C, K, R, S, OH, OW = g.h, g.w, g.c, g.k, g.r, g.s, g.oh, g.ow
    PH = (DIRECT_TILE_H - 1) * sh + (R - 1) * dh + 1
    PW = (DIRECT_TILE_W - 1) * sw + (S - 1) * dw + 1
    assert 16 * (PH * PW + DIRECT_TILE_K * R * S) == direct_smem_bytes(g)
    vec16 = direct_vec(C) == 16
    X, Wf = x.reshape(-1), w.reshape(-1)

    def load16(src: np.ndarray, base: int, c0: int) -> np.ndarray:
        if vec16:
            assert base % 16 == 0, "unaligned int4 load"
            return src[base : base + 16]
        return np.array([src[base + j] if c0 + j < C else 0 for j in range(16)], np.int8)

    Y = np.full(g.out_shape, -999999, np.int64)
    tiles_w = -(-OW // DIRECT_TILE_W)
    grid = (-(-OH // DIRECT_TILE_H) * tiles_w, -(-K // DIRECT_TILE_K), g.n)
    tid = np.arange(DIRECT_THREADS)
    px, py, kq = tid % DIRECT_TILE_W, (tid // DIRECT_TILE_W) % DIRECT_TILE_H, tid // (DIRECT_TILE_H * DIRECT_TILE_W)
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                oh0, ow0, k0, n = (bx // tiles_w) * DIRECT_TILE_H, (bx % tiles_w) * DIRECT_TILE_W, by * DIRECT_TILE_K, bz
                ih0, iw0 = oh0 * sh - ph, ow0 * sw - pw
                acc = np.zeros((DIRECT_THREADS, 8), np.int64)
                for c0 in range(0, C, 16):
                    in_s = np.full((PH * PW, 16), 55, np.int8)
                    w_s = np.full((DIRECT_TILE_K * R * S, 16), 55, np.int8)
                    for i in range(PH * PW):
                        ih, iw = ih0 + i // PW, iw0 + i % PW
                        if 0 <= ih < H and 0 <= iw < W:
                            in_s[i] = load16(X, ((n * H + ih) * W + iw) * C + c0, c0)
                        else:
                            in_s[i] = pad
                    for i in range(DIRECT_TILE_K * R * S):
                        k, rs = k0 + i // (R * S), i % (R * S)
                        w_s[i] = load16(Wf, (k * R * S + rs) * C + c0, c0) if k < K else 0
                    for r in range(R):
                        for s in range(S):
                            xi = (py * sh + r * dh) * PW + px * sw + s * dw
                            assert xi.max() < PH * PW
                            xv = in_s[xi].astype(np.int64)  # [threads, 16]
                            for j in range(8):
                                wv = w_s[(kq * 8 + j) * R * S + r * S + s].astype(np.int64)
                                acc[:, j] += (xv * wv).sum(axis=1)
                oh, ow = oh0 + py, ow0 + px
                for t in np.nonzero((oh < OH) & (ow < OW))[0]:
                    for j in range(8):
                        k = k0 + kq[t] * 8 + j
                        if k >= K:
                            break
                        Y[n, oh[t], ow[t], k] = acc[t, j]
    return Y


# (n, h, w, c, k, r, s, stride, padding, dilation, pad_value)
CASES = [
    (1, 6, 7, 16, 8, 3, 3, (1, 1), (1, 1), (1, 1), -7),  # vec16, 3x3 same
    (2, 9, 8, 32, 130, 3, 3, (2, 2), (1, 1), (1, 1), 5),  # vec16, stride 2, two n-tiles, 2 images per tile
    (1, 7, 9, 16, 20, 3, 2, (1, 2), (2, 0), (2, 3), 100),  # vec16, dilation, asymmetric everything
    (3, 5, 5, 8, 6, 3, 3, (1, 1), (1, 1), (1, 1), -128),  # vec4, Kg = 72: padded to 80
    (1, 11, 10, 12, 9, 2, 3, (2, 1), (0, 2), (3, 1), 33),  # vec4, Kg = 72
    (2, 8, 8, 3, 16, 3, 3, (2, 2), (1, 1), (1, 1), 0),  # vec1, RGB-like first layer
    (1, 5, 6, 5, 4, 1, 1, (1, 1), (0, 0), (1, 1), 9),  # vec1, 1x1
    (1, 12, 12, 64, 4, 1, 1, (1, 1), (0, 0), (1, 1), 0),  # vec16 1x1: one tap per K tile
    (1, 4, 4, 48, 3, 3, 3, (1, 1), (3, 3), (1, 1), -1),  # padding larger than the filter reach
]
IDS = ["x".join(map(str, c[:7])) + f"-s{c[7][0]}{c[7][1]}p{c[8][0]}{c[8][1]}d{c[9][0]}{c[9][1]}" for c in CASES]


def _operands(case: tuple) -> tuple[np.ndarray, np.ndarray]:
    n, h, w, c, k, r, s = case[:7]
    rng = np.random.default_rng(sum(case[:7]))
    return (rng.integers(-128, 128, (n, h, w, c), dtype=np.int8), rng.integers(-128, 128, (k, r, s, c), dtype=np.int8))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_emulated_igemm_is_exact(case: tuple) -> None:
    x, w = _operands(case)
    got = emulate_igemm(x, w, *case[7:10], case[10], lanes=False)
    np.testing.assert_array_equal(got, int8_conv2d_ref(x, w, *case[7:11]).astype(np.int64))


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5]], ids=[IDS[0], IDS[3], IDS[5]])
def test_emulated_igemm_lane_level_is_exact(case: tuple) -> None:
    # ldmatrix fragments, mma.m16n8k32 and the epilogue's store coordinates, lane by lane
    x, w = _operands(case)
    got = emulate_igemm(x, w, *case[7:10], case[10], lanes=True)
    np.testing.assert_array_equal(got, int8_conv2d_ref(x, w, *case[7:11]).astype(np.int64))


def test_emulated_igemm_many_m_tiles() -> None:
    # 1089 output pixels = 9 m-tiles: the grouped rasterization wraps past GROUP_M
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (1, 35, 35, 4), dtype=np.int8)
    w = rng.integers(-128, 128, (5, 3, 3, 4), dtype=np.int8)
    got = emulate_igemm(x, w, (1, 1), (0, 0), (1, 1), 0, lanes=False)
    np.testing.assert_array_equal(got, int8_conv2d_ref(x, w).astype(np.int64))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_emulated_direct_is_exact(case: tuple) -> None:
    x, w = _operands(case)
    got = emulate_direct(x, w, *case[7:10], case[10])
    np.testing.assert_array_equal(got, int8_conv2d_ref(x, w, *case[7:11]).astype(np.int64))


def test_emulated_epilogue_matches_requant_twin() -> None:
    # the epilogue's float path on the emulated accumulators equals the twin
    case = CASES[1]
    x, w = _operands(case)
    k = case[4]
    rng = np.random.default_rng(11)
    bias = rng.integers(-5000, 5000, k).astype(np.int32)
    mult = rng.uniform(1e-5, 1e-3, k)
    mult[0] = 0.5
    acc = emulate_igemm(x, w, *case[7:10], case[10], lanes=False).astype(np.int32)
    y = np.clip(np.rint((acc + bias).astype(np.float64) * mult) + 3, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(y, int8_conv2d_requant_ref(x, w, bias, mult, 3, 0, 255, *case[7:11]))
