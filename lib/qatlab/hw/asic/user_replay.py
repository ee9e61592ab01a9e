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
misses or hits (:func:`user_replay`, the reference).

:func:`user_replay_events` gives the same figures faster: whether a request hits does
not depend on time (the window moves only at a miss), so the misses are found first by a
vectorised search, and the rows are stepped through only at a read miss or a write-buffer
event. Cost: vectorised work per request, a Python step per miss and per event.
"""

from __future__ import annotations

from typing import Any

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


def _geometry(buf: Any, fetch: np.ndarray, size_words: int, bw: int) -> tuple[np.ndarray, int]:
    """Set SCALE-Sim's read-buffer geometry on ``buf`` (lines in all, active and
    prefetch lines, the prefetch's DRAM lines, the first fill's words, the bandwidth);
    returns the requested words and the words per line."""
    valid = fetch[fetch >= 0]
    per_set = ceil_div(size_words, 100)
    active, prefetch = -(-size_words // 2), size_words - (-(-size_words // 2))
    buf.nl = len(valid) // per_set + 1  # SCALE-Sim always appends a last (maybe empty) set
    buf.al = min(ceil_div(active, per_set), buf.nl)
    buf.pl = min(ceil_div(prefetch, per_set), buf.nl - buf.al)
    buf.fetch_lines = ceil_div(prefetch, bw)
    buf.dram = min(ceil_div(active, bw), ceil_div(len(fetch), bw)) * bw  # the first (active) fill
    buf.bw = bw
    return valid, per_set


class ReadBuffer:
    """SCALE-Sim's USER-mode read buffer, one request at a time."""

    def __init__(self, fetch: np.ndarray, size_words: int, bw: int) -> None:
        valid, per_set = _geometry(self, fetch, size_words, bw)
        line = np.arange(len(valid)) // per_set
        order = np.argsort(valid, kind="stable")
        words, first = np.unique(valid[order], return_index=True)
        bounds = np.append(first, len(valid)).tolist()
        lines = line[order].tolist()
        self.lines = {w: lines[bounds[j] : bounds[j + 1]] for j, w in enumerate(words.tolist())}
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
    w, r = _request_rows(folds, m)
    return w.tolist(), np.searchsorted(r, np.arange(m.compute_rows + 1), side="left")


def _request_rows(folds, m: ArrayMapping) -> tuple[np.ndarray, np.ndarray]:
    """Requested words (invalid dropped) and each one's demand row, all folds in order."""
    words, rows = [], []
    for f, (a, r) in enumerate(folds):
        ok = a >= 0
        words.append(a[ok])
        rows.append(np.asarray(r)[ok] + f * m.rows_per_fold)
    return np.concatenate(words), np.concatenate(rows)


def _record(stall: int, last_out: int, ifmap: Any, filt: Any, wb: "WriteBuffer") -> dict:
    """The figures both replays report, from their buffers' final state."""
    return {
        "stall": stall,
        "total_cycles": last_out,
        "dram_ifmap": ifmap.dram,
        "dram_filter": filt.dram,
        "dram_ofmap": wb.writes,
        "ofmap_stop": wb.stop if wb.stop is not None else 0,
    }


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
    return _record(stall, last_out, ib, fb, wb)


# ---- the same figures, jumping from event to event ---------------------------------


class _MissScan:
    """Where SCALE-Sim's USER-mode read buffer misses, found without a Python step per request.

    Whether a request hits depends only on the window's position and the lines that hold
    its word, never on time: the window moves only on a miss. So the misses (and the
    shifts each costs) are found first, over the whole request stream: for a window at
    line ``s``, a word hits iff its first line at or after ``s`` (cyclically) is within
    ``al`` lines, a search in the sorted (word, line) pairs done for a stretch of
    requests at once; only at a miss does the scan step in Python.
    """

    def __init__(self, fetch: np.ndarray, size_words: int, bw: int) -> None:
        valid, per_set = _geometry(self, fetch, size_words, bw)
        keys = np.sort(valid * self.nl + np.arange(len(valid), dtype=np.int64) // per_set)
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]  # np.unique hashes: slower here
        # Where each word's (word, line) pairs begin, by word: a lookup per request, not a search.
        self.start = np.searchsorted(keys // self.nl, np.arange(int(valid.max(initial=-1)) + 2))
        self.keys = keys

    def misses(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(request index, shifts) of every request that misses, in order; adds the fetches to ``dram``."""
        keys, nl, al, pl = self.keys, self.nl, self.al, self.pl
        base = words * nl
        lo, hi = self.start[words], self.start[words + 1]  # each word's (word, line) pairs
        first_line = keys[np.minimum(lo, len(keys) - 1)] - base + nl  # cyclic successor when none is at or after s
        at, shifts = [], []
        s = pos = 0
        span = 64
        n = len(words)
        while pos < n:
            end = min(n, pos + span)
            idx = np.searchsorted(keys, base[pos:end] + s)
            inside = idx < hi[pos:end]
            succ = np.where(inside, keys[np.minimum(idx, len(keys) - 1)] - base[pos:end], first_line[pos:end])
            miss = np.flatnonzero(succ - s >= al)
            if not len(miss):
                pos, span = end, span * 2
                continue
            j = pos + int(miss[0])
            lines = (keys[lo[j] : hi[j]] - base[j]).tolist()
            k = 0
            while not any((ln - s) % nl < al for ln in lines):
                s = (s + pl) % nl
                k += 1
            at.append(j)
            shifts.append(k)
            pos, span = j + 1, 64
        self.dram += sum(shifts) * self.fetch_lines * self.bw
        return np.asarray(at, dtype=np.int64), np.asarray(shifts, dtype=np.int64)


def _row_shifts(scan: _MissScan, folds, m: ArrayMapping) -> dict[int, int]:
    words, rows = _request_rows(folds, m)
    at, shifts = scan.misses(words)
    out: dict[int, int] = {}
    for r, k in zip(rows[at].tolist(), shifts.tolist()):
        out[r] = out.get(r, 0) + k
    return out


def _read_stall(last: int, shifts: int, fetch_lines: int, cycle: int) -> tuple[int, int]:
    """(fetch end, SCALE-Sim's offset) after ``shifts`` window shifts in a row issued at ``cycle`` (see ReadBuffer.row)."""
    off = 1
    for _ in range(shifts):
        last += fetch_lines + 1
        late = last - (cycle + off)
        off += late
        if late > 0:
            off += late
    return last, off


def user_replay_events(m: ArrayMapping, addr: IfmapAddresses, size_words: tuple[int, int, int], bws: tuple[int, int, int]) -> dict:
    """:func:`user_replay`'s figures, stepping only at read misses and write-buffer events.

    The read buffers' misses do not depend on time (:class:`_MissScan`); a row without a
    miss adds no read stall, and a row that neither starts a drain nor fills the write
    buffer adds none either, so such rows are passed in bulk (their outputs stored at
    once, found from the rows' cumulative output counts). Cost: a vectorised search per
    stretch of requests between misses, then a Python step per miss and per
    write-buffer event, not per request or per row.
    """
    isz, fsz, osz = size_words
    ibw, fbw, obw = bws
    ib = _MissScan(ifmap_prefetch(m, addr), isz, ibw)
    fb = _MissScan(filter_prefetch(m), fsz, fbw)
    i_rows = _row_shifts(ib, ifmap_folds(m, addr), m)
    f_rows = _row_shifts(fb, filter_folds(m), m)
    read_rows = sorted(set(i_rows) | set(f_rows)) + [m.compute_rows]
    rows = m.ofmap_rows
    wb = WriteBuffer(osz, obw)
    i_last = f_last = -1  # each read buffer's last fetch ends here (the first fill: before row 0)
    stall = last_out = row = 0
    for stop in read_rows:
        while row < stop:  # rows without a read miss: only the write buffer acts
            cycle = row + stall
            before = rows.before(row)
            if cycle < wb.drain_end:  # a drain in flight: rows store until one fills the buffer or the drain ends
                need, until = max(1, wb.free), min(stop, wb.drain_end - stall)
            else:  # rows store until one leaves the buffer more than half occupied
                need, until = max(1, wb.free - wb.active + 1), stop
            g = before + need - 1  # the word that acts
            event = rows.row_of(g) if g < rows.total else m.compute_rows
            quiet = min(event, until)
            if quiet > row:
                wb._store(rows.before(quiet) - before)
                last_out = max(last_out, quiet - 1 + stall)
                row = quiet
                continue
            o_st = wb.row(rows.before(row + 1) - before, cycle)
            last_out = max(last_out, cycle + o_st)
            stall += o_st
            row += 1
        if stop >= m.compute_rows:
            break
        cycle = row + stall
        i_st = f_st = 0
        if row in i_rows:
            i_last, off = _read_stall(i_last, i_rows[row], ib.fetch_lines, cycle)
            i_st = off - 1
        if row in f_rows:
            f_last, off = _read_stall(f_last, f_rows[row], fb.fetch_lines, cycle)
            f_st = off - 1
        o_st = wb.row(rows.before(row + 1) - rows.before(row), cycle)
        last_out = max(last_out, cycle + o_st)
        stall += max(i_st, f_st, o_st)
        row += 1
    wb.finish(last_out)
    return _record(stall, last_out, ib, fb, wb)
