"""Exact CALC-mode DRAM read counts from the operand address streams (opt-in, slower).

SCALE-Sim's CALC-mode read buffer counts a DRAM read for every requested word that
is not in its window: the misses since the window was last emptied, grouped in sets
of ``floor(S/100)`` words; when 50 sets have filled, the window restarts empty (the
next 50 sets). While an operand fits, the count is its distinct words and the
closed form is exact; beyond that it depends on the order of requests, which this
module reproduces: it generates each fold's requests in SCALE-Sim's demand order
(skewed, row by row, left to right) and replays the window.

The replay does not visit words one by one. Between two window restarts a request
misses iff it is the first request of its word since the restart and the word was not
fetched since the previous restart, so each stretch is a vectorised "first occurrence"
query (``np.unique``). Cost: O(requests log requests), with numpy; the requests number
the SRAM reads (millions for a large layer), so this is the reference for the
closed-form estimate, not the default.
"""

from __future__ import annotations

import numpy as np

from qatlab.hw.asic.dataflow import ArrayMapping
from qatlab.hw.asic.memory import CALC_ACTIVE_SETS, CALC_PREFETCH_SETS, calc_items_per_set


def _diag(t_len: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(time, column) of a ``t_len x width`` block in skewed row-major order."""
    d = np.arange(t_len + width - 1)[:, None]
    col = np.arange(width)[None, :]
    t = d - col
    ok = (t >= 0) & (t < t_len)
    return t[ok], np.broadcast_to(col, ok.shape)[ok]


class IfmapAddresses:
    """Address of ifmap-matrix entry (m, k), SCALE-Sim's layout and (ceil) window geometry; -1 if outside."""

    def __init__(
        self,
        ifmap_h: int,
        ifmap_w: int,
        filter_h: int,
        filter_w: int,
        channels: int,
        stride_h: int,
        stride_w: int,
        gemm_k: int | None = None,
    ) -> None:
        self.h, self.w, self.fh, self.fw, self.c, self.sh, self.sw = ifmap_h, ifmap_w, filter_h, filter_w, channels, stride_h, stride_w
        self.gemm_k = gemm_k
        self.ow = -(-(ifmap_w - filter_w + stride_w) // stride_w)
        self.oh = -(-(ifmap_h - filter_h + stride_h) // stride_h)

    def __call__(self, m: np.ndarray, k: np.ndarray) -> np.ndarray:
        if self.gemm_k is not None:
            return m * self.gemm_k + k
        img, pix = np.divmod(m, self.oh * self.ow)
        oy, ox = np.divmod(pix, self.ow)
        kh, rem = np.divmod(k, self.fw * self.c)
        kw, ch = np.divmod(rem, self.c)
        y, x = oy * self.sh + kh, ox * self.sw + kw
        addr = ((img * self.h + y) * self.w + x) * self.c + ch
        return np.where((y < self.h) & (x < self.w), addr, -1)


def ifmap_folds(m: ArrayMapping, addr: IfmapAddresses):
    """Per fold: (ifmap word, demand row within the fold) in SCALE-Sim's request order."""
    ru, cu = m.row_used(), m.col_used()
    for fc in range(m.col_fold):
        for fr in range(m.row_fold):
            if m.dataflow == "os":  # rows = output pixels, time = reduction; skewed from row 0
                t, i = _diag(m.T, int(ru[fr]))
                yield addr(fr * m.R + i, t), t + i
            elif m.dataflow == "ws":  # rows = reduction, time = output pixels; after R load rows
                t, i = _diag(m.T, int(ru[fr]))
                yield addr(t, fr * m.R + i), m.R + t + i
            else:  # is: the stationary tile, bottom row first, left to right
                rows = np.arange(int(ru[fr]))[::-1]
                kk = np.repeat(fr * m.R + rows, int(cu[fc]))
                mm = np.tile(fc * m.C + np.arange(int(cu[fc])), len(rows))
                yield addr(mm, kk), np.repeat(m.R - 1 - rows, int(cu[fc]))


def filter_folds(m: ArrayMapping):
    """Per fold: (filter word n*K + k, demand row within the fold) in SCALE-Sim's request order."""
    ru, cu = m.row_used(), m.col_used()
    for fc in range(m.col_fold):
        for fr in range(m.row_fold):
            if m.dataflow == "os":  # columns = filters, time = reduction; skewed from row 0
                t, c = _diag(m.T, int(cu[fc]))
                yield (fc * m.C + c) * m.K + t, t + c
            elif m.dataflow == "ws":  # the stationary tile, bottom row first, left to right
                rows = np.arange(int(ru[fr]))[::-1]
                kk = np.repeat(fr * m.R + rows, int(cu[fc]))
                nn = np.tile(fc * m.C + np.arange(int(cu[fc])), len(rows))
                yield nn * m.K + kk, np.repeat(m.R - 1 - rows, int(cu[fc]))
            else:  # is: rows = reduction, time = filters; after R load rows
                t, i = _diag(m.T, int(ru[fr]))
                yield t * m.K + fr * m.R + i, m.R + t + i


def _stream(folds) -> np.ndarray:
    s = np.concatenate([a for a, _ in folds])
    return s[s >= 0]


def ifmap_stream(m: ArrayMapping, addr: IfmapAddresses) -> np.ndarray:
    """Ifmap words in SCALE-Sim's request order (entries outside the input dropped)."""
    return _stream(ifmap_folds(m, addr))


def filter_stream(m: ArrayMapping) -> np.ndarray:
    """Filter words (address n*K + k) in SCALE-Sim's request order."""
    return _stream(filter_folds(m))


def window_misses(stream: np.ndarray, n_addr: int, size_words: int) -> int:
    """Replay SCALE-Sim's CALC-mode read window over ``stream``; returns its DRAM reads."""
    items = calc_items_per_set(size_words)
    if items < 1:
        raise ValueError(f"SRAM of {size_words} words is below SCALE-Sim's 100-word minimum")
    last = np.full(n_addr, -1, dtype=np.int64)  # set that last fetched each word
    cur = n_in = start = count = 0
    end_set = CALC_ACTIVE_SETS - 1
    p, n = 0, len(stream)
    chunk = 1 << 14
    while p < n:
        need = (end_set + 1 - cur) * items - n_in  # misses until the window restarts
        while True:
            q = min(n, p + max(chunk, 2 * need))
            seg = stream[p:q]
            uniq, first = np.unique(seg, return_index=True)
            miss = np.sort(first[last[uniq] < start])
            if len(miss) >= need or q == n:
                break
            chunk *= 2
        take = miss[:need]
        ids = cur + (n_in + np.arange(len(take))) // items
        last[seg[take]] = ids
        count += len(take)
        filled = n_in + len(take)
        cur, n_in = cur + filled // items, filled % items
        if len(take) == need:  # the window restarts right after this miss
            p += int(take[-1]) + 1
            start += CALC_PREFETCH_SETS
            end_set += CALC_PREFETCH_SETS
        else:
            p = q
    return count


def calc_dram_reads_exact(m: ArrayMapping, addr: IfmapAddresses, ifmap_size_words: int, filter_size_words: int) -> tuple[int, int]:
    """(ifmap, filter) DRAM reads of SCALE-Sim's CALC mode, replayed exactly."""
    si, sf = ifmap_stream(m, addr), filter_stream(m)
    i = window_misses(si, int(si.max()) + 1, ifmap_size_words)
    f = window_misses(sf, int(sf.max()) + 1, filter_size_words)
    return i, f
