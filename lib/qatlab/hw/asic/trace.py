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
default visits no request (:func:`os_ifmap_reads_by_folds`: runs of folds by the pixels
they cover first, the folds where the window empties by arithmetic on their taps).

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


class _FoldTaps:
    """One os row fold's (row, tap) pairs, grouped by the input pixel they read.

    Pair ``k`` (array row ``i``, tap ``q``) requests channel ``ch`` of its pixel on
    anti-diagonal ``off = i + q * c`` plus ``ch``, at row ``i`` of it: at request time
    ``base + ch * r`` with ``base = off * r + i`` (``r`` requests a diagonal, rows in
    order). Within a pixel the pairs are sorted by ``base``: every channel is asked for
    first by the pixel's first pair, then by its second, and so on.
    """

    def __init__(self, window: np.ndarray, c: int) -> None:
        r, taps = window.shape
        ok = (window >= 0).ravel()
        rows = np.arange(r, dtype=np.int64)[:, None]
        off = (rows + np.arange(taps, dtype=np.int64) * c).ravel()[ok]
        pix = window.ravel()[ok]
        base = off * r + np.repeat(rows.ravel(), taps)[ok]
        self.diagonals = taps * c + r  # past the last anti-diagonal that holds a request
        # Pixel-major, then request order (bases are below diagonals * r). The keys come
        # in sorted runs (one per array row), which the stable sort merges.
        order = np.argsort(pix * (self.diagonals * r) + base, kind="stable")
        self.pix, self.off, self.base = pix[order], off[order], base[order]
        self.row = self.base % r
        edge = self.pix[1:] != self.pix[:-1]
        self.head = np.flatnonzero(np.concatenate(([True], edge)))
        self.tail = np.flatnonzero(np.concatenate((edge, [True])))
        self.pixels = self.pix[self.head]
        self.head_off, self.head_row = self.off[self.head], self.row[self.head]
        self.r, self.c = r, c

    def cut(self, start: np.ndarray, end: np.ndarray, row: np.ndarray, need: int) -> int:
        """Request time just after the ``need``-th miss, run ``k`` missing on diagonals ``start[k] .. end[k]-1`` at row ``row[k]``.

        A pair's channels are one request per diagonal at a fixed row and no two pairs
        share a request, so the misses per diagonal are a difference of two step counts
        (empty runs cancel out), and within the diagonal found they fall in row order.
        """
        n = self.diagonals + 1
        upto = np.cumsum(np.cumsum(np.bincount(start, minlength=n) - np.bincount(end, minlength=n)))
        d = int(np.searchsorted(upto, need))
        before = int(upto[d - 1]) if d else 0
        rows = np.sort(row[(start <= d) & (d < end)])
        return d * self.r + int(rows[need - before - 1]) + 1

    def asked_before(self, t: int) -> np.ndarray:
        """Channels each pair requested before request time ``t``."""
        n = (t + self.r - 1 - self.base) // self.r
        return np.minimum(np.maximum(n, 0, out=n), self.c, out=n)  # np.clip costs more on small arrays


class _OsWalk:
    """SCALE-Sim's CALC-mode ifmap read window over an os convolution, from one emptying to the next.

    The state of an epoch is one integer per input pixel, ``first``: the channels
    ``first .. c-1`` of the pixel have been requested since the window last emptied
    (see :func:`os_ifmap_reads_by_folds`).
    """

    def __init__(self, m: ArrayMapping, a: IfmapAddresses, window: int) -> None:
        self.m, self.a, self.w, self.R, self.folds = m, a, window, m.R, m.row_fold
        images = -(-m.M // (a.oh * a.ow))
        self.pixels = images * a.h * a.w
        # The output rows and columns whose windows cover each input row and column
        # (SCALE-Sim's windows start at multiples of the stride; its last ones may run
        # off the input, or start past it).
        y, x = np.arange(a.h, dtype=np.int64), np.arange(a.w, dtype=np.int64)
        self.y0, self.y1 = np.maximum(0, -((a.fh - 1 - y) // a.sh)), np.minimum(a.oh - 1, y // a.sh)
        self.x0, self.x1 = np.maximum(0, -((a.fw - 1 - x) // a.sw)), np.minimum(a.ow - 1, x // a.sw)
        # First output pixel covering each pixel; past the last output pixel if none does.
        ys = np.where(self.y0 <= self.y1, self.y0, images * a.oh)
        xs = np.where(self.x0 <= self.x1, self.x0, m.M)
        out = ((np.arange(images, dtype=np.int64)[:, None, None] * a.oh + ys[:, None]) * a.ow + xs).ravel()
        # Each output pixel's fold by a lookup: integer division costs more on long arrays.
        fold_of = np.repeat(np.arange(self.folds + 1, dtype=np.int64), m.R)[: m.M + 1]
        fold_of[m.M] = self.folds  # row_fold: no fold covers the pixel
        self.first_fold = fold_of[np.minimum(out, m.M, out=out)]
        # fresh[f]: pixels whose first covering fold comes before fold f.
        self.fresh = np.zeros(self.folds + 1, dtype=np.int64)
        self.fresh[1:] = np.cumsum(np.bincount(self.first_fold, minlength=self.folds + 1)[: self.folds])
        kh, kw = np.divmod(np.arange(a.fh * a.fw, dtype=np.int64), a.fw)
        self.kh, self.kw = kh[None, :], kw[None, :]
        self.first = np.full(self.pixels, a.c, dtype=np.int64)
        self.count = self.emptied = 0  # misses in the current epoch, epochs ended
        self._taps: dict[tuple[int, int], _FoldTaps] = {}
        self._again: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}

    def _rows(self, fr: int) -> tuple[int, int]:
        r = self.R if fr < self.folds - 1 else self.m.M - self.R * (self.folds - 1)
        return fr * self.R, r

    def _corner(self, o: int) -> int:
        """The input pixel at the top-left corner of output pixel ``o``'s window.

        A window that starts past its row or below its image (SCALE-Sim's extra ones)
        gets the next row's or image's first pixel: corners then never decrease with ``o``.
        """
        a = self.a
        img, rest = divmod(o, a.oh * a.ow)
        oy, ox = divmod(rest, a.ow)
        return min((img * a.h + oy * a.sh) * a.w + min(ox * a.sw, a.w), (img + 1) * a.h * a.w)

    def _span(self, f0: int, f1: int) -> tuple[int, int]:
        """Input pixels ``lo .. hi-1`` that hold every pixel the windows of folds ``f0 .. f1-1`` cover."""
        p1, r = self._rows(f1 - 1)
        a = self.a
        return self._corner(f0 * self.R), min(self.pixels, self._corner(p1 + r - 1) + (a.fh - 1) * a.w + a.fw)

    def window(self, fr: int) -> np.ndarray:
        """Input pixel of each (row, tap) of row fold ``fr``; -1 outside the input."""
        return self._window(*self._rows(fr))

    def taps(self, fr: int) -> tuple[_FoldTaps, int]:
        """(taps, shift): fold ``fr``'s pairs, their pixels ``shift`` below the fold's own.

        A fold within one image whose windows do not reach its bottom edge reads the
        pixels of the fold of the same width that starts at the same output column in
        the first output row, moved down by whole input rows: one set of taps serves
        every such fold (their sort is the costly part).
        """
        a = self.a
        p0, r = self._rows(fr)
        img, rest = divmod(p0, a.oh * a.ow)
        oy, ox = divmod(rest, a.ow)
        last_img, last = divmod(p0 + r - 1, a.oh * a.ow)
        if last_img == img and (last // a.ow) * a.sh + a.fh <= a.h:
            key, at, shift = (ox, r), ox, (img * a.h + oy * a.sh) * a.w
        else:
            key, at, shift = (-1 - fr, r), p0, 0
        if key not in self._taps:
            self._taps[key] = _FoldTaps(self._window(at, r), a.c)
        return self._taps[key], shift

    def _window(self, p0: int, r: int) -> np.ndarray:
        a = self.a
        img, rest = np.divmod(np.arange(p0, p0 + r, dtype=np.int64), a.oh * a.ow)
        oy, ox = np.divmod(rest, a.ow)
        y, x = oy[:, None] * a.sh + self.kh, ox[:, None] * a.sw + self.kw
        return np.where((y < a.h) & (x < a.w), (img[:, None] * a.h + y) * a.w + x, -1)

    def seen_whole(self, f0: int, f1: int) -> None:
        """Mark every channel seen of the pixels first covered by folds ``f0 .. f1-1``."""
        if f1 > f0:
            lo, hi = self._span(f0, f1)
            ff = self.first_fold[lo:hi]
            self.first[lo:hi][(ff >= f0) & (ff < f1)] = 0

    def met_again(self, f: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(pixels, folds, last): the pixels first covered before fold ``f`` that a fold ``>= f`` covers, the first such fold of each, the latest of those.

        They lie where the windows of the folds before ``f`` and from ``f`` on overlap.
        Each pixel's covering output pixels form a rectangle in output space (rows
        ``y0 .. y1``, columns ``x0 .. x1``); the first of them at or after output pixel
        ``f * R`` in raster order gives the fold.
        """
        if f not in self._again:
            self._again[f] = self._met_again(f)
        return self._again[f]

    def _met_again(self, f: int) -> tuple[np.ndarray, np.ndarray, int]:
        a, n, q = self.a, self.folds, f * self.R
        if f == 0 or f >= n:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), -1
        lo = self._corner(q)
        hi = max(lo, min(self.pixels, self._corner(q - 1) + (a.fh - 1) * a.w + a.fw))
        pix = np.flatnonzero(self.first_fold[lo:hi] < f) + lo
        plane = a.h * a.w
        if lo // plane == (hi - 1) // plane:  # one image: its first output pixel is a number
            img = lo // plane
            y, x = np.divmod(pix - img * plane, a.w)
            qy, qx = divmod(q - img * a.oh * a.ow, a.ow)
        else:
            img, rest = np.divmod(pix, plane)
            y, x = np.divmod(rest, a.w)
            qy, qx = np.divmod(q - img * (a.oh * a.ow), a.ow)
        # Each pixel's first window comes before output pixel q: its next one at or after q.
        x0, x1 = self.x0[x], self.x1[x]
        past = qx > x1
        oy = qy + past
        out = (img * a.oh + oy) * a.ow + np.where(past, x0, np.maximum(qx, x0))
        keep = (oy <= self.y1[y]) & (out < self.m.M)
        at = out[keep] // self.R
        return pix[keep], at, int(at.max()) if len(at) else -1

    def empty_in(self, fr: int) -> None:
        """A fold in which the window empties (at least once), by arithmetic on its taps."""
        ft, shift = self.taps(fr)
        w, c = self.w, self.a.c
        pixels = ft.pixels + shift
        # The epoch under way misses a pixel's unseen channels 0 .. first-1, each where the
        # pixel's first pair asks for it.
        t = ft.cut(ft.head_off, ft.head_off + self.first[pixels], ft.head_row, w - self.count)
        self.emptied += 1
        while True:  # epochs that begin inside this fold, at request time t
            done = ft.asked_before(t)
            last = done[ft.tail]  # the pixel's channels its last pair had asked for
            left = c * len(last) - int(last.sum())
            if left < w:
                self.count = left
                break
            # In the new epoch pair k is the first to ask for the channels the pair before
            # it had asked for before t and it had not: done[k] .. done[k-1]-1.
            upper = np.empty_like(done)
            upper[1:] = done[:-1]
            upper[ft.head] = c
            t = ft.cut(ft.off + done, ft.off + upper, ft.row, w)
            self.emptied += 1
        self.first.fill(c)
        self.first[pixels] = last

    def run(self) -> int:
        w, c, n, fresh = self.w, self.a.c, self.folds, self.fresh
        for _ in range(self.m.col_fold):
            # A pass meets each pixel first in the fold that covers it first. Only the
            # folds up to the first that empties the window matter: look at the pixels of
            # enough folds to miss twice the words needed if all were unseen, then more.
            g = int(np.searchsorted(fresh, 2 * -(-(w - self.count) // c)))
            while True:
                g = min(n, max(g, 1))
                hi = self._span(0, g)[1]
                per_fold = np.bincount(self.first_fold[:hi], weights=self.first[:hi], minlength=n + 1)[:g]
                upto = np.cumsum(per_fold.astype(np.int64))
                e = int(np.searchsorted(upto, w - self.count))  # the first fold that reaches w misses
                if e < g or g == n:
                    break
                g *= 2
            if e >= n:
                self.count += int(upto[-1])
                self.seen_whole(0, n)
                continue
            self.count += int(upto[e - 1]) if e else 0
            self.seen_whole(0, e)
            self.empty_in(e)
            while e + 1 < n:
                # After the window emptied in fold e, fold f misses all channels of the
                # pixels it covers first (unseen since), and the pixels of earlier folds it
                # is the first since e to meet again (those of fold e partly seen).
                f = e + 1
                again, at, latest = self.met_again(f)
                unseen = self.first[again]
                need, met = w - self.count, int(unseen.sum())
                # The first fold that would empty the window if every pixel met again came
                # first: the answer when all of them are met before it.
                e = int(np.searchsorted(fresh, fresh[f] + -(-(need - met) // c))) - 1 if need > met else f
                if e <= latest:  # some are met in or after it: count fold by fold
                    per_fold = np.bincount(at - f, weights=unseen, minlength=n - f).astype(np.int64)
                    upto = c * (fresh[f + 1 :] - fresh[f]) + np.cumsum(per_fold)
                    e = f + int(np.searchsorted(upto, need))
                    done = min(e, n)
                    self.count += int(upto[done - f - 1]) if done > f else 0
                    self.first[again[at < done]] = 0
                else:
                    done = min(e, n)
                    self.count += c * int(fresh[done] - fresh[f]) + met
                    self.first[again] = 0
                self.seen_whole(f, done)
                if e >= n:
                    break
                self.empty_in(e)
        return self.emptied * w + self.count


def os_ifmap_reads_by_folds(m: ArrayMapping, addr: IfmapAddresses, size_words: int) -> int:
    """:func:`calc_ifmap_reads_replay` for an os convolution, by arithmetic on folds and taps.

    An os fold requests every tap of ``R`` consecutive output pixels, so the words a whole
    fold requests are all channels of the input pixels its windows cover. Within an epoch
    the words seen so far are, for each input pixel, a suffix of its channels: whole folds
    add all of them, and an epoch that begins inside a fold has seen, of each pixel, the
    channels from some tap onwards (the rest of the fold's anti-diagonal order). So one
    integer per input pixel (the first channel seen) holds the epoch.

    A fold that does not empty the window adds the unseen channels of the pixels it
    covers, and all the folds up to the next emptying are added at once: from a pass's
    start each pixel is met first in the fold that covers it first; after an emptying
    the folds miss every channel of the pixels they cover first plus the unseen ones of
    the earlier folds' pixels they are the first to meet again (a band of pixels where
    the windows of consecutive folds overlap, found from each pixel's rectangle of
    covering windows). A fold in which the window empties is counted from its taps:
    within the fold each (row, tap) pair requests its pixel's channels in order, one per
    anti-diagonal, so an epoch's misses there are arithmetic runs of channels, one per
    pair (:class:`_FoldTaps`), and the request at which the window empties is found by
    counting misses per diagonal. Cost: per emptying, O(R x filter taps + K) for the
    fold and O(row folds) to find the next; per pass, O(input pixels) at most; no
    request is visited. Exact; compared with the replay in the tests.
    """
    if m.dataflow != "os" or addr.gemm_k is not None:
        raise ValueError("os_ifmap_reads_by_folds: needs an os mapping of a convolution")
    return _os_ifmap_reads_by_folds(m, addr.key, size_words)


@lru_cache(maxsize=256)
def _os_ifmap_reads_by_folds(m: ArrayMapping, key: tuple, size_words: int) -> int:
    items = calc_items_per_set(size_words)
    if items < 1:
        raise ValueError(f"SRAM of {size_words} words is below SCALE-Sim's 100-word minimum")
    return _OsWalk(m, IfmapAddresses(*key), CALC_ACTIVE_SETS * items).run()
