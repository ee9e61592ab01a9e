"""Exact USER-mode memory timing for operands that overflow their SRAM (opt-in, slow).

In USER mode SCALE-Sim fetches each operand's prefetch matrix (its words in fold order,
some matrices read along anti-diagonals) in lines of the bank bandwidth, and groups
the words into 100 "sets" per buffer size. Half the sets are active; a request for a
word outside them shifts the active window by the prefetch half and waits for that
fetch. Once an operand overflows the active half, its stalls depend on the request
order, and SCALE-Sim's arithmetic has two defects that this replay reproduces (the
SCALE-Sim-named fields must match it):

- a wait that ends after the request (``p > 0`` cycles late) is added twice;
- a fetch that finished *before* the request pulls the row's clock back by the lead.

The corrected figure is our ``cycles`` (the closed form plus the bandwidth-roofline
estimate of :func:`qatlab.hw.asic.memory.user_read_estimate`).

Each demand row is replayed in order: the ifmap and filter requests through their read
buffers, the row's output words through the write buffer; the row's stall is the
largest of the three, as in SCALE-Sim. Cost: one Python step per requested word that
misses or hits (it is the reference, not the fast path).
"""

from __future__ import annotations

import numpy as np

from qatlab.hw.asic.dataflow import ArrayMapping, ceil_div
from qatlab.hw.asic.trace import IfmapAddresses, _diag, filter_folds, ifmap_folds


def _rolled(mat: np.ndarray) -> np.ndarray:
    """A matrix read along anti-diagonals, column ascending (SCALE-Sim's prefetch roll)."""
    t, c = _diag(mat.shape[0], mat.shape[1])
    return mat[t, c]


def ifmap_prefetch(m: ArrayMapping, addr: IfmapAddresses) -> np.ndarray:
    """The ifmap prefetch matrix in fetch order (-1 = padding or outside the input)."""
    ru, cu = m.row_used(), m.col_used()
    blocks = []
    if m.dataflow in ("os", "ws"):
        for fr in range(m.row_fold):
            b = np.full((m.T, m.R), -1, dtype=np.int64)
            t, i = np.meshgrid(np.arange(m.T), np.arange(int(ru[fr])), indexing="ij")
            b[:, : int(ru[fr])] = addr(fr * m.R + i, t) if m.dataflow == "os" else addr(t, fr * m.R + i)
            blocks.append(b)
        return _rolled(np.vstack(blocks))
    for fc in range(m.col_fold):  # is: K x C blocks, row by row
        b = np.full((m.K, m.C), -1, dtype=np.int64)
        k, c = np.meshgrid(np.arange(m.K), np.arange(int(cu[fc])), indexing="ij")
        b[:, : int(cu[fc])] = addr(fc * m.C + c, k)
        blocks.append(b)
    return np.vstack(blocks).ravel()


def filter_prefetch(m: ArrayMapping) -> np.ndarray:
    """The filter prefetch matrix in fetch order (words n*K + k; -1 = padding)."""
    ru, cu = m.row_used(), m.col_used()
    blocks = []
    if m.dataflow in ("os", "ws"):
        for fc in range(m.col_fold):  # K x C blocks
            b = np.full((m.K, m.C), -1, dtype=np.int64)
            k, c = np.meshgrid(np.arange(m.K), np.arange(int(cu[fc])), indexing="ij")
            b[:, : int(cu[fc])] = (fc * m.C + c) * m.K + k
            blocks.append(b)
        mat = np.vstack(blocks)
        return _rolled(mat) if m.dataflow == "os" else mat.ravel()
    for fr in range(m.row_fold):  # is: N x R blocks
        b = np.full((m.N, m.R), -1, dtype=np.int64)
        n, i = np.meshgrid(np.arange(m.N), np.arange(int(ru[fr])), indexing="ij")
        b[:, : int(ru[fr])] = n * m.K + fr * m.R + i
        blocks.append(b)
    return _rolled(np.vstack(blocks))


class ReadBuffer:
    """SCALE-Sim's USER-mode read buffer, one request at a time."""

    def __init__(self, fetch: np.ndarray, size_words: int, bw: int) -> None:
        valid = fetch[fetch >= 0]
        per_set = ceil_div(size_words, 100)
        active, prefetch = -(-size_words // 2), size_words - (-(-size_words // 2))
        self.nl = len(valid) // per_set + 1  # SCALE-Sim always appends a last (maybe empty) set
        self.al = min(ceil_div(active, per_set), self.nl)
        self.pl = min(ceil_div(prefetch, per_set), self.nl - self.al)
        line = np.arange(len(valid)) // per_set
        order = np.argsort(valid, kind="stable")
        words, first = np.unique(valid[order], return_index=True)
        bounds = np.append(first, len(valid)).tolist()
        lines = line[order].tolist()
        self.lines = {w: lines[bounds[j] : bounds[j + 1]] for j, w in enumerate(words.tolist())}
        self.bw = bw
        self.fetch_lines = ceil_div(prefetch, bw)
        self.dram = min(ceil_div(active, bw), ceil_div(len(fetch), bw)) * bw  # the first (active) fill
        self.start = 0
        self.last = -1  # the first fill ends the cycle before row 0

    def _hit(self, word: int) -> bool:
        return any((ln - self.start) % self.nl < self.al for ln in self.lines[word])

    def row(self, words: list[int], cycle: int) -> int:
        """Serve one demand row issued at ``cycle``; returns SCALE-Sim's offset (1 = no stall)."""
        off = 1
        for w in words:
            while not self._hit(w):
                self.start = (self.start + self.pl) % self.nl
                self.dram += self.fetch_lines * self.bw
                self.last += self.fetch_lines + 1
                late = self.last - (cycle + off)
                off += late  # a fetch that ended early pulls the clock back (SCALE-Sim)
                if late > 0:
                    off += late  # ... and a late one is counted twice (SCALE-Sim)
        return off


class WriteBuffer:
    """SCALE-Sim's ofmap write buffer, one demand row at a time (bulk within a row)."""

    def __init__(self, size_words: int, bw: int) -> None:
        self.bw = bw
        self.active = -(-size_words // 2)
        self.lines_per_drain = ceil_div(size_words - self.active, bw)
        self.free = size_words
        self.in_line = self.n_lines = self.drained_to = self.drain_end = self.writes = 0
        self.partial: dict[int, int] = {}
        self.stop: int | None = None

    def _store(self, n: int) -> None:
        self.free -= n
        q, self.in_line = divmod(self.in_line + n, self.bw)
        self.n_lines += q

    def _drain(self, cycle: int) -> tuple[int, int]:
        """Drain up to half a buffer from ``cycle``: (words counted, last cycle)."""
        if self.in_line:  # the drain closes the open line early
            self.partial[self.n_lines] = self.in_line
            self.n_lines, self.in_line = self.n_lines + 1, 0
        end = min(self.drained_to + self.lines_per_drain, self.n_lines)
        n = end - self.drained_to
        data = n * self.bw - (self.bw - self.partial.pop(end - 1, self.bw))
        for k in [k for k in self.partial if k < end]:
            del self.partial[k]
        self.writes += data
        last = cycle + n - 1
        self.stop = last if self.stop is None else max(self.stop, last)
        self.drained_to = end
        return data, last

    def row(self, count: int, cycle: int) -> int:
        """Store ``count`` words issued at ``cycle``; returns the row's stall."""
        c = cycle
        while count > 0:
            if c < self.drain_end:  # a drain is in flight: the word that fills the buffer waits
                n = max(1, self.free)
                if count < n:
                    self._store(count)
                    break
                self._store(n)
                count -= n
                c = self.drain_end
            else:  # the word that leaves more than half occupied starts a drain
                n = max(1, self.free - self.active + 1)
                if count < n:
                    self._store(count)
                    break
                self._store(n)
                count -= n
                data, self.drain_end = self._drain(c)
                self.free += data
        return c - cycle

    def finish(self, cycle: int) -> None:
        if self.in_line:
            self.partial[self.n_lines] = self.in_line
            self.n_lines, self.in_line = self.n_lines + 1, 0
        while self.drained_to < self.n_lines:
            cycle = self._drain(cycle)[1] + 1


def _rows_of(folds, m: ArrayMapping) -> tuple[list[int], np.ndarray]:
    """Requested words (invalid dropped) and each demand row's slice bounds, all folds."""
    words, rows = [], []
    for f, (a, r) in enumerate(folds):
        ok = a >= 0
        words.append(a[ok])
        rows.append(np.asarray(r)[ok] + f * m.rows_per_fold)
    w, r = np.concatenate(words), np.concatenate(rows)
    return w.tolist(), np.searchsorted(r, np.arange(m.compute_rows + 1), side="left")


def user_replay(m: ArrayMapping, addr: IfmapAddresses, size_words: tuple[int, int, int], bws: tuple[int, int, int]) -> dict:
    """Replay SCALE-Sim's USER mode over every demand row; SCALE-Sim's figures, exactly."""
    isz, fsz, osz = size_words
    ibw, fbw, obw = bws
    ib = ReadBuffer(ifmap_prefetch(m, addr), isz, ibw)
    fb = ReadBuffer(filter_prefetch(m), fsz, fbw)
    wb = WriteBuffer(osz, obw)
    iw, ibnd = _rows_of(ifmap_folds(m, addr), m)
    fw, fbnd = _rows_of(filter_folds(m), m)
    out_counts = m.ofmap_rows.dense()
    stall = 0
    last_out = 0
    for row in range(m.compute_rows):
        cycle = row + stall
        i_st = ib.row(iw[ibnd[row] : ibnd[row + 1]], cycle) - 1
        f_st = fb.row(fw[fbnd[row] : fbnd[row + 1]], cycle) - 1
        o_st = wb.row(out_counts[row], cycle)
        last_out = max(last_out, cycle + o_st)
        stall += max(i_st, f_st, o_st)
    wb.finish(last_out)
    return {
        "stall": stall,
        "total_cycles": last_out,
        "dram_ifmap": ib.dram,
        "dram_filter": fb.dram,
        "dram_ofmap": wb.writes,
        "ofmap_stop": wb.stop if wb.stop is not None else 0,
    }
