"""Exact CALC-mode DRAM read counts from the operand address streams (the replay).

SCALE-Sim's CALC-mode read buffer counts a DRAM read for every requested word that
is not in its window: the misses since the window was last emptied, grouped in sets
of ``floor(S/100)`` words; when 50 sets have filled (``W`` misses), the window restarts
empty. So a request misses iff its word was not requested since the current epoch
began. This module generates each fold's requests in SCALE-Sim's demand order (skewed,
row by row, left to right) and replays the window on them.

Used where no closed form exists (:mod:`qatlab.hw.asic.calc_reads` covers block
streams: filters, GEMMs, convolutions whose windows do not overlap) and, with
``dram_model="exact"``, as the reference for the closed form. For an os convolution the
default walks folds instead (:func:`os_ifmap_reads_by_folds`: whole folds by their
geometry, request by request only in the folds where the window empties).

The replay does not visit words one by one: one stable sort gives every request the
position of its word's previous request, and an epoch that began at ``p`` misses exactly
at the requests whose previous request lies before ``p`` (:func:`epoch_misses`). A
stream that repeats one pass (os and ws ifmaps, once per column fold) is generated and
sorted for one pass only. Cost: O(n log n) in the pass length plus O(n) vectorised
comparisons over the whole stream. :func:`window_misses_stepwise` is the plain
request-by-request reference the tests compare it with.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from qatlab.hw.asic.dataflow import ArrayMapping
from qatlab.hw.asic.memory import CALC_ACTIVE_SETS, calc_items_per_set


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
        self.key = (ifmap_h, ifmap_w, filter_h, filter_w, channels, stride_h, stride_w, gemm_k)
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

    def tables(self, n_m: int) -> "AddressTables | None":
        """Per-pixel and per-tap lookup tables for the first ``n_m`` pixels (None for a GEMM)."""
        if self.gemm_k is not None:
            return None
        return AddressTables(self, n_m)


class AddressTables:
    """:class:`IfmapAddresses` as two table lookups and an add: a replay asks for the same
    pixels and taps millions of times, and gathers cost less than four integer divisions."""

    def __init__(self, a: IfmapAddresses, n_m: int) -> None:
        m = np.arange(n_m, dtype=np.int64)
        img, pix = np.divmod(m, a.oh * a.ow)
        oy, ox = np.divmod(pix, a.ow)
        k = np.arange(a.fh * a.fw * a.c, dtype=np.int64)
        kh, rem = np.divmod(k, a.fw * a.c)
        kw, ch = np.divmod(rem, a.c)
        self.m_base = ((img * a.h + oy * a.sh) * a.w + ox * a.sw) * a.c
        self.k_off = (kh * a.w + kw) * a.c + ch
        self.y_room, self.x_room = a.h - oy * a.sh, a.w - ox * a.sw  # taps must stay below these
        self.kh, self.kw = kh, kw

    def __call__(self, m: np.ndarray, k: np.ndarray) -> np.ndarray:
        inside = (self.kh[k] < self.y_room[m]) & (self.kw[k] < self.x_room[m])
        return np.where(inside, self.m_base[m] + self.k_off[k], -1)


def ifmap_folds(m: ArrayMapping, addr: IfmapAddresses):
    """Per fold: (ifmap word, demand row within the fold) in SCALE-Sim's request order."""
    ru, cu = m.row_used(), m.col_used()
    addr = addr.tables(m.M) or addr
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


def ifmap_pass(m: ArrayMapping, addr: IfmapAddresses) -> tuple[np.ndarray, int]:
    """(one pass, passes): the ifmap stream is the pass repeated ``passes`` times.

    os and ws request the same ifmap words in the same order for every column fold;
    is holds each ifmap word once (one pass).
    """
    if m.dataflow == "is" or m.col_fold == 1:
        return ifmap_stream(m, addr), 1
    one = ArrayMapping(m.dataflow, m.R, m.C, m.M, min(m.N, m.C), m.K)  # the same row folds, one column fold
    return ifmap_stream(one, addr), m.col_fold


def filter_stream(m: ArrayMapping) -> np.ndarray:
    """Filter words (address n*K + k) in SCALE-Sim's request order."""
    return _stream(filter_folds(m))


def previous_request(stream: np.ndarray) -> np.ndarray:
    """Where each request's word was last requested, for ``stream`` repeated any number of times.

    Within the first pass a word's first request gets a negative value (never requested
    before); add ``k * len(stream)`` for pass ``k``: a word's first request in a pass then
    points at its last request in the previous pass. One array of one pass's length
    serves every pass (:func:`epoch_misses`), however many column folds repeat it.
    """
    n = len(stream)
    order = np.argsort(stream, kind="stable")
    ws = stream[order]
    same = np.empty(n, dtype=bool)
    same[:1] = False
    same[1:] = ws[1:] == ws[:-1]
    prev = np.empty(n, dtype=np.int64)  # every entry is set below: repeats, then first requests
    prev[order[same]] = order[np.flatnonzero(same) - 1]
    # Each word's first and last request in the pass, word by word in the same order.
    is_last = np.ones(n, dtype=bool)
    is_last[:-1] = ~same[1:]
    prev[order[~same]] = order[is_last] - n
    return prev


def epoch_misses(prev: np.ndarray, size_words: int, passes: int = 1) -> int:
    """SCALE-Sim's CALC-mode read window over ``passes`` repetitions of a pass.

    ``prev``: :func:`previous_request` of the pass. Within an epoch that began at request
    ``p``, request ``t`` misses iff its word was not requested in ``[p, t)``: iff its
    previous request lies before ``p``. The epoch ends right after its ``W``-th miss.
    Cost: one vectorised comparison per request, in slices of at most one pass.
    """
    items = calc_items_per_set(size_words)
    if items < 1:
        raise ValueError(f"SRAM of {size_words} words is below SCALE-Sim's 100-word minimum")
    w = CALC_ACTIVE_SETS * items
    n = len(prev)
    total = n * passes
    count = 0
    start = pos = got = 0  # epoch start, next request to look at, misses since start
    span = min(4 * w, n)
    while pos < total:
        k, off = divmod(pos, n)
        end = min(off + span, n)  # never past this pass: slices stay one pass long at most
        miss = np.flatnonzero(prev[off:end] + k * n < start)
        if got + len(miss) >= w:
            t = pos + int(miss[w - got - 1])
            count += w
            start = pos = t + 1
            got = 0
        else:
            got += len(miss)
            pos += end - off
            span = min(2 * span, n)
    return count + got


def window_misses_stepwise(stream: list[int], size_words: int) -> int:
    """The plain reference: SCALE-Sim's CALC-mode window, one request at a time."""
    w = CALC_ACTIVE_SETS * calc_items_per_set(size_words)
    epoch: set[int] = set()
    count = 0
    for word in stream:
        if word not in epoch:
            epoch.add(word)
            count += 1
            if len(epoch) == w:
                epoch = set()
    return count


def calc_ifmap_reads_replay(m: ArrayMapping, addr: IfmapAddresses, size_words: int) -> int:
    """Ifmap DRAM reads of SCALE-Sim's CALC mode, replayed exactly (one pass generated, repeated)."""
    return _ifmap_reads_replay(m, addr.key, size_words)


def clear_replay_cache() -> None:
    """Forget the replayed counts kept for this process (benchmarks time a cold network)."""
    _ifmap_reads_replay.cache_clear()
    _os_ifmap_reads_by_folds.cache_clear()


# Networks repeat layer shapes (ResNet's blocks): a replayed count depends on the mapping,
# the address geometry and the buffer size only, so it is kept for the process.
@lru_cache(maxsize=256)
def _ifmap_reads_replay(m: ArrayMapping, key: tuple, size_words: int) -> int:
    one, passes = ifmap_pass(m, IfmapAddresses(*key))
    return epoch_misses(previous_request(one), size_words, passes)


def calc_filter_reads_replay(m: ArrayMapping, size_words: int) -> int:
    """Filter DRAM reads of SCALE-Sim's CALC mode, replayed exactly."""
    return epoch_misses(previous_request(filter_stream(m)), size_words)


def calc_dram_reads_exact(m: ArrayMapping, addr: IfmapAddresses, ifmap_size_words: int, filter_size_words: int) -> tuple[int, int]:
    """(ifmap, filter) DRAM reads of SCALE-Sim's CALC mode, replayed exactly."""
    return calc_ifmap_reads_replay(m, addr, ifmap_size_words), calc_filter_reads_replay(m, filter_size_words)


def os_ifmap_reads_by_folds(m: ArrayMapping, addr: IfmapAddresses, size_words: int) -> int:
    """:func:`calc_ifmap_reads_replay` for an os convolution, walking folds instead of requests.

    An os fold requests every tap of ``R`` consecutive output pixels, so the words a whole
    fold requests are all channels of the input pixels its windows cover. Within an epoch
    the words seen so far are, for each input pixel, a suffix of its channels: whole folds
    add all of them, and an epoch that begins inside a fold has seen, of each pixel, the
    channels from some tap onwards (the rest of the fold's anti-diagonal order). So one
    integer per input pixel (the first channel seen) holds the epoch: a fold that does not
    end the epoch adds the unseen channels of the pixels it covers and is done in a few
    vectorised operations on that band of pixels. Only a fold in which the window empties
    is replayed request by request (its requests and their previous requests within the
    fold are made once per row fold and reused by every pass). Exact; compared with the
    replay in the tests.
    """
    if m.dataflow != "os" or addr.gemm_k is not None:
        raise ValueError("os_ifmap_reads_by_folds: needs an os mapping of a convolution")
    return _os_ifmap_reads_by_folds(m, addr.key, size_words)


@lru_cache(maxsize=256)
def _os_ifmap_reads_by_folds(m: ArrayMapping, key: tuple, size_words: int) -> int:
    a = IfmapAddresses(*key)
    items = calc_items_per_set(size_words)
    if items < 1:
        raise ValueError(f"SRAM of {size_words} words is below SCALE-Sim's 100-word minimum")
    w = CALC_ACTIVE_SETS * items
    c = a.c
    # Input pixel of each (output pixel, filter position); -1 outside the input.
    p = np.arange(m.M, dtype=np.int64)
    img, pix = np.divmod(p, a.oh * a.ow)
    oy, ox = np.divmod(pix, a.ow)
    kh, kw = np.divmod(np.arange(a.fh * a.fw, dtype=np.int64), a.fw)
    y = oy[:, None] * a.sh + kh[None, :]
    x = ox[:, None] * a.sw + kw[None, :]
    win = np.where((y < a.h) & (x < a.w), (img[:, None] * a.h + y) * a.w + x, -1)
    first = np.full(int(img[-1] + 1) * a.h * a.w, c, dtype=np.int64)  # first channel seen, per input pixel
    ru = m.row_used()
    bands: dict[int, tuple[int, int, np.ndarray]] = {}
    folds: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    count = emptied = 0  # misses in the current epoch, epochs ended
    for _ in range(m.col_fold):
        for fr in range(m.row_fold):
            p0, r = fr * m.R, int(ru[fr])
            if fr not in bands:
                idx = win[p0 : p0 + r].ravel()
                idx = idx[idx >= 0]  # empty when SCALE-Sim's extra windows start past the input
                lo, hi = (int(idx.min()), int(idx.max()) + 1) if len(idx) else (0, 0)
                mask = np.zeros(hi - lo, dtype=bool)
                mask[idx - lo] = True
                bands[fr] = (lo, hi, np.flatnonzero(mask))  # integer indices: faster than the mask
            lo, hi, covered = bands[fr]
            band = first[lo:hi]
            new = int(band[covered].sum())  # unseen channels are 0 .. first-1
            if count + new < w:
                count += new
                band[covered] = 0
                continue
            if fr not in folds:  # the fold's requests in demand order
                t, i = _diag(m.T, r)
                tap, ch = np.divmod(t, c)
                inpix = win[p0 + i, tap]
                ok = inpix >= 0
                inpix, ch = inpix[ok], ch[ok]
                word = (inpix - lo) * c + ch  # within the fold's band: numpy sorts 16-bit keys by radix
                folds[fr] = (inpix, ch, previous_request(word.astype(np.uint16) if (hi - lo) * c <= 1 << 16 else word))
            inpix, ch, prev = folds[fr]
            # The epoch under way: a request misses if its channel is unseen and it is the
            # word's first request in this fold.
            cum = np.cumsum((prev < 0) & (ch < first[inpix]))
            start = int(np.searchsorted(cum, w - count)) + 1
            emptied += 1
            while True:  # epochs that begin inside this fold
                miss = np.flatnonzero(prev[start:] < start)
                if len(miss) < w:
                    count = len(miss)
                    break
                emptied += 1
                start += int(miss[w - 1]) + 1
            first[:] = c
            np.minimum.at(first, inpix[start:], ch[start:])
    return emptied * w + count
