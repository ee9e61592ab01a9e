"""A cycle-stepped functional model of the systolic array: the plain reference.

It moves real integer operands through an ``R x C`` grid of registers, one clock at a
time, and produces the layer's int32 outputs; it also counts the cycles and the SRAM
words it reads and writes. The closed form (:mod:`qatlab.hw.asic.dataflow`) must agree
with it: same cycles per fold, same SRAM counts (the corrected ones), and the
outputs must equal a plain integer GEMM/convolution bit for bit. It is slow (a few
numpy operations per cycle), so it is meant for small arrays and layers.

The schedule is static, as a hardware sequencer's would be: every fold runs the
full-array fill and drain, whether or not all rows and columns hold work; idle cells
see bubbles.

- **os**: row ``i`` receives ifmap operands from the left, skewed by ``i`` cycles;
  column ``j`` receives filter operands from the top, skewed by ``j``; cell ``(i, j)``
  multiplies the pair it holds and accumulates in place. The last pair reaches the far
  corner at cycle ``T + R + C - 3``. Accumulators are read out through shadow
  registers while the next fold fills, so the fold takes ``T + R + C - 2`` cycles.
- **ws / is**: the stationary tile (weights for ws, inputs for is) shifts in from the
  top, one row per cycle (``R`` cycles, last row first). The streamed operand then
  enters row ``r`` from the left at cycle ``R + t + r`` and moves right; partial sums
  move down one row per cycle and leave the bottom of column ``c`` at cycle
  ``R + t + (R - 1) + c``. A fold takes ``T + 2R + C - 2`` cycles. Partial sums of
  different row folds are added in the output SRAM (a read, an add, a write).

**Packing** (``pack = k``): each operand token is a packed word of ``k`` sub-byte
operands and a cell does ``k`` MACs per cycle, so the reduction axis shrinks to
``ceil(K / k)``. **Sparsity**: reduction positions where the layer's N:M pattern is
zero are dropped before mapping (their weights must be zero, which is checked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qatlab.hw.asic.dataflow import ArrayMapping, ceil_div


@dataclass
class SteppedResult:
    out: np.ndarray  # (M, N) int32
    cycles: int
    fold_cycles: list[int]
    sram_ifmap_reads: int  # words (packed tokens) read from the ifmap SRAM
    sram_filter_reads: int
    sram_ofmap_writes: int  # output / partial-sum words written
    sram_psum_reads: int  # partial sums read back to accumulate across row folds
    macs: int  # non-bubble multiply-accumulates (sub-operand level)


def _wrap_int32(x: np.ndarray) -> np.ndarray:
    # The accumulator is 32 bits wide: results wrap as two's complement, like hardware.
    return x.astype(np.int64).astype(np.int32)


def _pack(a: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Group the reduction axis into ceil(len/k) tokens of k operands (zero-padded), last axis k."""
    a = np.moveaxis(a, axis, -1)
    n = a.shape[-1]
    pad = ceil_div(n, k) * k - n
    if pad:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), dtype=a.dtype)], axis=-1)
    a = a.reshape(a.shape[:-1] + (ceil_div(n, k), k))
    return np.moveaxis(a, -2, axis)


def run_gemm(a: np.ndarray, b: np.ndarray, rows: int, cols: int, dataflow: str, pack: int = 1) -> SteppedResult:
    """Multiply ``a`` (M x K) by ``b`` (K x N) on the stepped array; exact integer arithmetic."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"shapes do not multiply: {a.shape} x {b.shape}")
    if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise TypeError("the stepped model takes integer operands")
    if pack < 1:
        raise ValueError(f"pack must be >= 1, got {pack}")
    m_, k_ = a.shape
    n_ = b.shape[1]
    ap = _pack(a.astype(np.int64), 1, pack)  # (M, K', k)
    bp = _pack(b.astype(np.int64), 0, pack)  # (K', N, k)
    kk = ap.shape[1]
    mp = ArrayMapping(dataflow, rows, cols, m_, n_, kk)
    out = np.zeros((m_, n_), dtype=np.int64)
    res = SteppedResult(out, 0, [], 0, 0, 0, 0, 0)
    for fc in range(mp.col_fold):
        for fr in range(mp.row_fold):
            if dataflow == "os":
                cyc = _fold_os(ap, bp, rows, cols, fr, fc, res)
            else:
                cyc = _fold_stationary(ap, bp, rows, cols, fr, fc, dataflow, res)
            res.fold_cycles.append(cyc)
    res.cycles = sum(res.fold_cycles)
    res.out = _wrap_int32(res.out)
    return res


def _fold_os(ap: np.ndarray, bp: np.ndarray, R: int, C: int, fr: int, fc: int, res: SteppedResult) -> int:
    m_, kk, k = ap.shape
    n_ = bp.shape[1]
    rows = np.arange(fr * R, fr * R + R)  # output pixels on this fold's rows
    colsn = np.arange(fc * C, fc * C + C)  # filters on its columns
    rv, cv = rows < m_, colsn < n_
    T = kk
    h = np.zeros((R, C, k), np.int64)  # ifmap operand registers (move right)
    hv = np.zeros((R, C), bool)
    v = np.zeros((R, C, k), np.int64)  # filter operand registers (move down)
    vv = np.zeros((R, C), bool)
    acc = np.zeros((R, C), np.int64)
    ri, cj = np.arange(R), np.arange(C)
    fold_len = T + R + C - 2
    for t in range(fold_len):
        # Left edge: row i gets reduction step t - i of its pixel (a bubble outside 0..T-1 or unused row).
        step = t - ri
        ok = (step >= 0) & (step < T) & rv
        left = np.zeros((R, k), np.int64)
        left[ok] = ap[rows[ok], step[ok]]
        res.sram_ifmap_reads += int(ok.sum())
        stepc = t - cj
        okc = (stepc >= 0) & (stepc < T) & cv
        top = np.zeros((C, k), np.int64)
        top[okc] = bp[stepc[okc], colsn[okc]].reshape(-1, k)
        res.sram_filter_reads += int(okc.sum())
        h = np.concatenate([left[:, None, :], h[:, :-1, :]], axis=1)
        hv = np.concatenate([ok[:, None], hv[:, :-1]], axis=1)
        v = np.concatenate([top[None, :, :], v[:-1, :, :]], axis=0)
        vv = np.concatenate([okc[None, :], vv[:-1, :]], axis=0)
        both = hv & vv
        acc += np.where(both, (h * v).sum(-1), 0)
        res.macs += int(both.sum()) * k
    # The skews line up: a cell sees the same reduction step on both inputs (checked by the result).
    out_rows, out_cols = rows[rv], colsn[cv]
    res.out[np.ix_(out_rows, out_cols)] += acc[np.ix_(rv, cv)]
    res.sram_ofmap_writes += int(rv.sum() * cv.sum())
    return fold_len


def _fold_stationary(ap: np.ndarray, bp: np.ndarray, R: int, C: int, fr: int, fc: int, df: str, res: SteppedResult) -> int:
    m_, kk, k = ap.shape
    n_ = bp.shape[1]
    kidx = np.arange(fr * R, fr * R + R)  # reduction steps on this fold's rows
    kv = kidx < kk
    if df == "ws":
        # Stationary weights S[r, c] = b[k_r, n_c]; stream row r: x_r[t] = a[m=t, k_r]; out (m=t, n_c).
        cidx = np.arange(fc * C, fc * C + C)
        cvalid = cidx < n_
        T = m_
        S = np.zeros((R, C, k), np.int64)
        S[np.ix_(kv, cvalid)] = bp[np.ix_(kidx[kv], cidx[cvalid])]
        res.sram_filter_reads += int(kv.sum() * cvalid.sum())

        def stream(r_ok: np.ndarray, t_idx: np.ndarray) -> np.ndarray:
            return ap[t_idx, kidx[r_ok]]

        def place(t_idx: np.ndarray, c_ok: np.ndarray, vals: np.ndarray) -> None:
            np.add.at(res.out, (t_idx, cidx[c_ok]), vals)

        counts = ("sram_ifmap_reads",)
    else:
        # Stationary inputs S[r, c] = a[m_c, k_r]; stream row r: x_r[t] = b[k_r, n=t]; out (m_c, n=t).
        cidx = np.arange(fc * C, fc * C + C)
        cvalid = cidx < m_
        T = n_
        S = np.zeros((R, C, k), np.int64)
        S[np.ix_(kv, cvalid)] = np.transpose(ap[np.ix_(cidx[cvalid], kidx[kv])], (1, 0, 2))
        res.sram_ifmap_reads += int(kv.sum() * cvalid.sum())

        def stream(r_ok: np.ndarray, t_idx: np.ndarray) -> np.ndarray:
            return bp[kidx[r_ok], t_idx]

        def place(t_idx: np.ndarray, c_ok: np.ndarray, vals: np.ndarray) -> None:
            np.add.at(res.out, (cidx[c_ok], t_idx), vals)

        counts = ("sram_filter_reads",)
    # Load phase (cycles 0..R-1): the tile shifts down from the top, last row first, so
    # after R cycles row r holds tile row r.
    tile = np.zeros((R, C, k), np.int64)
    for t in range(R):
        tile = np.concatenate([S[R - 1 - t][None], tile[:-1]], axis=0)
    S = tile
    x = np.zeros((R, C, k), np.int64)  # streamed operand registers (move right)
    xv = np.zeros((R, C), bool)
    p = np.zeros((R, C), np.int64)  # partial-sum registers (move down)
    ri, cj = np.arange(R), np.arange(C)
    fold_len = T + 2 * R + C - 2
    for t in range(R, fold_len):
        step = t - R - ri  # stream index entering row r now
        ok = (step >= 0) & (step < T) & kv
        left = np.zeros((R, k), np.int64)
        if ok.any():
            left[ok] = stream(ok, step[ok])
        setattr(res, counts[0], getattr(res, counts[0]) + int(ok.sum()))
        x = np.concatenate([left[:, None, :], x[:, :-1, :]], axis=1)
        xv = np.concatenate([ok[:, None], xv[:, :-1]], axis=1)
        prod = np.where(xv, (x * S).sum(-1), 0)
        res.macs += int((xv & cvalid[None, :]).sum()) * k
        newp = np.empty_like(p)
        newp[0] = prod[0]
        newp[1:] = p[:-1] + prod[1:]
        p = newp
        # The bottom row's partial sum is complete: stream index t - R - (R-1) - c in column c.
        tout = t - R - (R - 1) - cj
        okc = (tout >= 0) & (tout < T) & cvalid
        if okc.any():
            place(tout[okc], okc, p[R - 1, okc])
            n_written = int(okc.sum())
            res.sram_ofmap_writes += n_written
            if fr > 0:
                res.sram_psum_reads += n_written  # read the earlier folds' partial sum to add to it
    return fold_len


# ---- convolution on the stepped array ----------------------------------------------------


def im2col(ifmap: np.ndarray, filter_h: int, filter_w: int, stride_h: int = 1, stride_w: int = 1) -> np.ndarray:
    """(H, W, C) -> (M, K) with SCALE-Sim's reduction order: K index = (kh * fw + kw) * C + c."""
    h, w, c = ifmap.shape
    oh, ow = (h - filter_h) // stride_h + 1, (w - filter_w) // stride_w + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"filter {filter_h}x{filter_w} is larger than the input {h}x{w}")
    cols = np.empty((oh, ow, filter_h, filter_w, c), dtype=ifmap.dtype)
    for kh in range(filter_h):
        for kw in range(filter_w):
            cols[:, :, kh, kw, :] = ifmap[kh : kh + stride_h * oh : stride_h, kw : kw + stride_w * ow : stride_w, :]
    return cols.reshape(oh * ow, filter_h * filter_w * c)


def conv_reference(ifmap: np.ndarray, weights: np.ndarray, stride_h: int = 1, stride_w: int = 1) -> np.ndarray:
    """Plain integer convolution (no padding): (H, W, C) x (fh, fw, C, N) -> (oh, ow, N) int32.

    Written as explicit loops over the filter taps with int64 sums, independent of
    :func:`im2col`, so it checks the operand mapping too.
    """
    h, w, c = ifmap.shape
    fh, fw, c2, n = weights.shape
    if c != c2:
        raise ValueError(f"channels differ: input {c}, weights {c2}")
    oh, ow = (h - fh) // stride_h + 1, (w - fw) // stride_w + 1
    acc = np.zeros((oh, ow, n), dtype=np.int64)
    x = ifmap.astype(np.int64)
    wt = weights.astype(np.int64)
    for kh in range(fh):
        for kw in range(fw):
            patch = x[kh : kh + stride_h * oh : stride_h, kw : kw + stride_w * ow : stride_w, :]  # (oh, ow, C)
            acc += np.tensordot(patch, wt[kh, kw], axes=([2], [0]))
    return _wrap_int32(acc)


def kept_positions(k: int, n: int, m: int) -> np.ndarray:
    """Reduction positions an N:M pattern keeps (the first n of every block of m)."""
    return np.flatnonzero(np.arange(k) % m < n)


def run_conv(
    ifmap: np.ndarray,
    weights: np.ndarray,
    rows: int,
    cols: int,
    dataflow: str,
    stride: int = 1,
    pack: int = 1,
    sparsity: tuple[int, int] = (1, 1),
) -> SteppedResult:
    """A convolution layer on the stepped array; ``out`` is reshaped to (oh, ow, N)."""
    fh, fw, c, n = weights.shape
    a = im2col(ifmap, fh, fw, stride, stride)
    b = weights.reshape(fh * fw * c, n)
    if sparsity != (1, 1):
        keep = kept_positions(b.shape[0], *sparsity)
        dropped = np.setdiff1d(np.arange(b.shape[0]), keep)
        if np.any(b[dropped] != 0):
            raise ValueError(f"weights are not {sparsity[0]}:{sparsity[1]} sparse: non-zero weights at skipped positions")
        a, b = a[:, keep], b[keep]
    res = run_gemm(a, b, rows, cols, dataflow, pack)
    oh, ow = (ifmap.shape[0] - fh) // stride + 1, (ifmap.shape[1] - fw) // stride + 1
    res.out = res.out.reshape(oh, ow, n)
    return res
