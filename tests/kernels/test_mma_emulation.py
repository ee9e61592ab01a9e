"""A lane-level numpy emulation of int8_gemm_mma.cu's index arithmetic.

No GPU is needed: the test replays, thread by thread, what the kernel's formulas do —
the cp.async chunk mapping with zero-fill at the edges, the STAGES ring of the
pipeline, the padded shared-memory rows, the per-lane ldmatrix.x4 addresses and the
register fragments of mma.m16n8k32 as the PTX ISA defines them, and the epilogue's
store coordinates — and checks that they compose to the exact GEMM. It catches
fragment/lane mapping mistakes; it does not prove anything about timing, races or
the hardware (the GPU tests do that).

The constants and formulas below mirror int8_gemm_mma.cu and the pieces it shares with
the implicit-GEMM conv kernel in qatlab_mma_tile.cuh (grouped_cta_tile, the pipeline of
mma_tile_gemm, warp_tile_ldsm / warp_tile_mma, warp_tile_store) line by line;
test_conv_emulation.py reuses those. If the kernels change, change them together.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from qatlab.kernels import int8_gemm_ref, int8_gemm_requant_ref
from qatlab.kernels.cupy_backend import MMA_BK as BK
from qatlab.kernels.cupy_backend import MMA_BM as BM
from qatlab.kernels.cupy_backend import MMA_BN as BN
from qatlab.kernels.cupy_backend import MMA_GROUP_M as GROUP_M
from qatlab.kernels.cupy_backend import MMA_LDS as LDS
from qatlab.kernels.cupy_backend import MMA_STAGES as STAGES
from qatlab.kernels.cupy_backend import MMA_THREADS as THREADS

LANES = np.arange(32)
G, T = LANES >> 2, LANES & 3  # groupID, threadID_in_group


def load_tile(smem: np.ndarray, stage: int, A: np.ndarray, B: np.ndarray, m0: int, n0: int, k0: int) -> None:
    M, K = A.shape
    N = B.shape[0]
    base = stage * (BM + BN) * LDS
    for tid in range(THREADS):
        for i in range(2):
            c = tid + i * THREADS
            row, col = c >> 2, (c & 3) * 16
            k = k0 + col
            kin = k < K
            for src, r0, lim, off in ((A, m0, M, base), (B, n0, N, base + BM * LDS)):
                dst = off + row * LDS + col
                ok = (r0 + row < lim) and kin
                smem[dst : dst + 16] = src[r0 + row, k : k + 16] if ok else 0  # src-size 0 -> zeros


def ldmatrix_x4(smem: np.ndarray, lane_addr: np.ndarray) -> np.ndarray:
    """regs[lane, j] = 4 int8 of matrix j: row lane//4 (address from lane 8j + lane//4), bytes 4*(lane%4)."""
    regs = np.empty((32, 4, 4), np.int8)
    for j in range(4):
        addr = lane_addr[8 * j + G] + 4 * T
        regs[:, j] = smem[addr[:, None] + np.arange(4)]
    return regs


def mma_m16n8k32(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """PTX fragment layouts of mma.m16n8k32.row.col.s32.s8.s8.s32 (per lane)."""
    At = np.zeros((16, 32), np.int64)
    Bt = np.zeros((32, 8), np.int64)  # [k, n]
    for lane in range(32):
        g, t = G[lane], T[lane]
        At[g, t * 4 : t * 4 + 4] = a[lane, 0]
        At[g + 8, t * 4 : t * 4 + 4] = a[lane, 1]
        At[g, 16 + t * 4 : 16 + t * 4 + 4] = a[lane, 2]
        At[g + 8, 16 + t * 4 : 16 + t * 4 + 4] = a[lane, 3]
        Bt[t * 4 : t * 4 + 4, g] = b[lane, 0]
        Bt[16 + t * 4 : 16 + t * 4 + 4, g] = b[lane, 1]
    D = At @ Bt
    for lane in range(32):
        g, t = G[lane], T[lane]
        c[lane] += [D[g, 2 * t], D[g, 2 * t + 1], D[g + 8, 2 * t], D[g + 8, 2 * t + 1]]


def grouped_cta_tile(bx: int, by: int, grid_m: int, grid_n: int) -> tuple[int, int]:
    """(bm, bn) of CTA (blockIdx.x, blockIdx.y): the grouped rasterization."""
    pid = by * grid_m + bx
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    gm = min(grid_m - first_m, GROUP_M)
    r = pid - (pid // per_group) * per_group
    return first_m + r % gm, r // gm


def pipeline(ktiles: int, load: Callable[[int, int], None], compute: Callable[[int], None]) -> None:
    """mma_tile_gemm's STAGES ring: load(stage, t) fills slot `stage` with K tile t,
    compute(As) consumes the slot whose A rows start at byte As (B's follow at As + BM*LDS)."""
    tile_in_stage = [-1] * STAGES
    for s in range(STAGES - 1):
        if s < ktiles:
            load(s, s)
            tile_in_stage[s] = s
    for kt in range(ktiles):
        pf = kt + STAGES - 1
        if pf < ktiles:
            assert tile_in_stage[pf % STAGES] in (-1, kt - 1), "prefetch would overwrite a live stage"
            load(pf % STAGES, pf)
            tile_in_stage[pf % STAGES] = pf
        assert tile_in_stage[kt % STAGES] == kt, "computing on the wrong stage"
        compute((kt % STAGES) * (BM + BN) * LDS)


def cta_tile_mma(smem: np.ndarray, acc: np.ndarray, As: int) -> None:
    """One K tile of all 8 warps: ldmatrix.x4 fragments and mma lane by lane, into
    acc [warp, i, j, lane, reg]."""
    Bs = As + BM * LDS
    for warp in range(8):
        warp_m, warp_n = warp >> 2, warp & 3
        a_row = warp_m * 64 + (LANES & 7) + ((LANES >> 3) & 1) * 8
        a_col = (LANES >> 4) * 16
        b_row = warp_n * 32 + (LANES & 7) + (LANES >> 4) * 8
        b_col = ((LANES >> 3) & 1) * 16
        a_base = As + a_row * LDS + a_col
        b_base = Bs + b_row * LDS + b_col
        for ks in range(BK // 32):
            af = [ldmatrix_x4(smem, a_base + i * 16 * LDS + ks * 32) for i in range(4)]
            bf: list = [None] * 4
            for j in range(2):
                r = ldmatrix_x4(smem, b_base + j * 16 * LDS + ks * 32)
                bf[2 * j], bf[2 * j + 1] = r[:, 0:2], r[:, 2:4]
            for i in range(4):
                for j in range(4):
                    mma_m16n8k32(acc[warp, i, j], af[i], bf[j])


def cta_tile_store(C: np.ndarray, acc: np.ndarray, m0: int, n0: int) -> None:
    """warp_tile_store's coordinates for every warp and lane: C [M, N] gets the CTA's tile."""
    M, N = C.shape
    for warp in range(8):
        warp_m, warp_n = warp >> 2, warp & 3
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            for j in range(4):
                col = n0 + warp_n * 32 + j * 8 + t * 2
                for i in range(4):
                    for h in range(2):
                        row = m0 + warp_m * 64 + i * 16 + g + h * 8
                        if row >= M:
                            continue
                        for e in range(2):
                            if col + e < N:
                                C[row, col + e] = acc[warp, i, j, lane, 2 * h + e]


def emulate(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    M, K = A.shape
    N = B.shape[0]
    assert K % 16 == 0, "the launcher pads K to a multiple of 16"
    C = np.full((M, N), -999999, np.int64)  # poison: every element must be written
    ktiles = (K + BK - 1) // BK
    grid_m, grid_n = (M + BM - 1) // BM, (N + BN - 1) // BN
    seen = set()
    for by in range(grid_n):  # launch order: blockIdx.x fastest
        for bx in range(grid_m):
            bm, bn = grouped_cta_tile(bx, by, grid_m, grid_n)
            assert 0 <= bm < grid_m and 0 <= bn < grid_n and (bm, bn) not in seen
            seen.add((bm, bn))
            m0, n0 = bm * BM, bn * BN
            smem = np.full(STAGES * (BM + BN) * LDS, 77, np.int8)  # garbage, incl. the pad bytes
            acc = np.zeros((8, 4, 4, 32, 4), np.int64)  # warp, i, j, lane, reg
            pipeline(ktiles, lambda stage, t: load_tile(smem, stage, A, B, m0, n0, t * BK), lambda As: cta_tile_mma(smem, acc, As))
            cta_tile_store(C, acc, m0, n0)
    return C


def _pad_k(x: np.ndarray) -> np.ndarray:
    k = x.shape[1]
    kp = -(-k // 16) * 16
    return np.pad(x, ((0, 0), (0, kp - k)))


@pytest.mark.parametrize(
    "shape", [(16, 8, 32), (129, 130, 65), (5, 3, 200), (128, 128, 64), (1300, 300, 20)], ids=lambda s: "x".join(map(str, s))
)
def test_emulated_mma_kernel_is_exact(shape: tuple[int, int, int]) -> None:
    m, n, k = shape
    rng = np.random.default_rng(m * n + k)
    A = rng.integers(-128, 128, (m, k), dtype=np.int8)
    B = rng.integers(-128, 128, (n, k), dtype=np.int8)
    got = emulate(_pad_k(A), _pad_k(B))
    np.testing.assert_array_equal(got, int8_gemm_ref(A, B).astype(np.int64))


def test_emulated_epilogue_rounding_matches_reference() -> None:
    # the epilogue's float path (rint of the float64 product, + zp, clamp) on the
    # emulated accumulators equals the reference's quant.requantize
    rng = np.random.default_rng(5)
    A = rng.integers(-128, 128, (20, 48), dtype=np.int8)
    B = rng.integers(-128, 128, (9, 48), dtype=np.int8)
    bias = rng.integers(-5000, 5000, 9).astype(np.int32)
    mult = rng.uniform(1e-4, 5e-3, 9)
    mult[0] = 0.5
    acc = emulate(A, B).astype(np.int32)
    y = np.clip(np.rint((acc + bias).astype(np.float64) * mult) + 3, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(y, int8_gemm_requant_ref(A, B, bias, mult, 3, -128, 127))
