"""The memory side: double-buffered SRAMs, DRAM traffic and the stalls it causes.

Three models, all matching SCALE-Sim 3.0.0's semantics where stated:

**Ofmap write buffer (exact, both bandwidth modes).** SCALE-Sim stores each output
word into a buffer of ``S`` words split in two halves. When more than half is
occupied and no drain is in flight, it drains ``ceil((S/2)/bw)`` lines of ``bw``
words to DRAM, one line per cycle; a write that finds the buffer full while a drain
is in flight stalls the array until the drain ends. When no row writes more than
``bw`` words (always in CALC mode) no drain ever waits and the drains follow in closed
form (:func:`write_buffer_closed`, whatever the layer's size). Otherwise
:func:`write_buffer` replays the buffer, jumping from event to event (drain, stall)
with prefix sums over the per-row write counts instead of visiting every word, so its
cost is the number of drains, not the number of writes; :func:`write_buffer_stepwise`
is the word-by-word reference of both. They reproduce two quirks of SCALE-Sim's code:

- at a drain, the partly filled current line is closed; a drain that covers such a
  line in its middle counts it as a full line (``bw`` words), so "DRAM OFMAP Writes"
  can exceed the words written (reported under ``dram_ofmap_writes``; the true
  figure is ``dram_ofmap_writes_corrected``);
- a line of the final drain starts the cycle after the previous one ends, so the
  last drain's end ("DRAM OFMAP Stop Cycle") sets "Total Cycles (incl. prefetch)".

**CALC-mode read buffers.** SCALE-Sim assumes reads never stall. Its DRAM read count
de-duplicates requests through a window of sets of ``floor(S/100)`` words that is
emptied every ``W = 50 * floor(S/100)`` misses: a request misses iff its word was not
requested since the window was last emptied. While an operand's distinct words (``U``)
number fewer than ``W`` no window is ever emptied and the count is exactly ``U``; the
same holds when every word is requested once (:func:`calc_dram_reads` says when).
Beyond that, filters, GEMM ifmaps and the ifmaps of convolutions whose windows do not
overlap are *block streams* whose count has a closed form
(:mod:`qatlab.hw.asic.calc_reads`); the ifmap of a convolution with overlapping
windows is counted by arithmetic on folds and filter taps (os) or replayed (ws, is)
(:mod:`qatlab.hw.asic.trace`). The first-prefetch cycle, which enters "Total Cycles
(incl. prefetch)", depends only on ``U``.

**USER-mode read buffers.** SCALE-Sim fetches the operand's prefetch matrix in lines of
the bank bandwidth. When all its lines fit the active half, every request hits: no
stall, and the DRAM count is the first fill. Otherwise SCALE-Sim's figures (DRAM words,
stalls, its stall-arithmetic defects) come from replaying its buffers row by row
(:mod:`qatlab.hw.asic.user_replay`); our own ``cycles`` instead use a bandwidth
roofline (:func:`user_read_estimate`), which does not carry those defects.
"""

from __future__ import annotations

from typing import NamedTuple

from qatlab.hw.asic.dataflow import ArrayMapping, RowCounts, ceil_div

ACTIVE_FRAC = 0.5  # SCALE-Sim's active/prefetch split of every double buffer
CALC_SETS = 100  # estimate mode tracks a buffer as 100 sets ...
CALC_ACTIVE_SETS = int(ACTIVE_FRAC * CALC_SETS)  # ... half of them active
CALC_PREFETCH_SETS = CALC_SETS - CALC_ACTIVE_SETS
CALC_FILL_BW = 10  # words/cycle SCALE-Sim assumes for the CALC-mode fill ("arbitrary", its comment)


class WriteBufferResult(NamedTuple):
    stall_cycles: int
    dram_writes: int  # SCALE-Sim's count (partial lines inside a drain counted full)
    dram_words: int  # words actually written back
    dram_start: int  # cycle of the first drained line
    dram_stop: int  # cycle of the last drained line
    drains: int


def write_buffer(rows: RowCounts, size_words: int, bw: int) -> WriteBufferResult:
    """Replay SCALE-Sim's ofmap write buffer over the per-row write counts ``rows``.

    Returns the stall cycles the buffer causes, the DRAM write count and the first and
    last DRAM cycles. Row ``i`` of the layer issues its writes at cycle ``i`` plus the
    stalls so far; a stall delays the remaining writes of its row and every later row.
    """
    if size_words < 2 or bw < 1:
        raise ValueError(f"write buffer needs >= 2 words and bandwidth >= 1, got {size_words}, {bw}")
    total_sz = size_words
    active = -(-total_sz // 2)  # ceil(S * 0.5)
    lines_per_drain = ceil_div(total_sz - active, bw)
    free = total_sz
    in_line = 0  # words in the open (not yet closed) line
    n_lines = 0  # closed lines
    partial: dict[int, int] = {}  # closed-early line -> words in it
    drained_to = 0  # next line to drain
    drain_end = 0  # cycle the in-flight drain ends
    writes = 0
    start = stop = None
    drains = 0
    stall = 0  # stalls of all rows before `row`
    row, off = -1, 0  # current row and the stall it has taken so far
    total = rows.total

    def drain(cycle: int) -> tuple[int, int]:
        """Drain up to one half-buffer of lines from ``cycle``; returns (words counted, last cycle)."""
        nonlocal drained_to, writes, start, stop, drains
        end = min(drained_to + lines_per_drain, n_lines)
        n = end - drained_to
        # SCALE-Sim subtracts the empty slots of the chunk's *last* line only.
        data = n * bw - (bw - partial.pop(end - 1, bw))
        for i in [k for k in partial if k < end]:  # early-closed lines inside the chunk: counted full
            del partial[i]
        writes += data
        last = cycle + n - 1
        start = cycle if start is None else start
        # The final drain ignores a drain still in flight, so an earlier drain can end later.
        stop = last if stop is None else max(stop, last)
        drained_to = end
        drains += 1
        return data, last

    g = 0
    while g < total:
        r = rows.row_of(g)
        if r != row:
            stall, off, row = stall + off, 0, r
        c = r + stall + off
        g_half = g + max(0, free - active)  # the write that leaves the buffer more than half full
        g_full = g + max(0, free - 1)  # the write that fills it
        if c >= drain_end:
            g_free = g
        else:  # first write issued at or after the in-flight drain's end
            g_free = rows.before(drain_end - stall - off)
        if g_free <= g_full:
            ge, is_drain = max(g_half, g_free), True
        else:
            ge, is_drain = g_full, False
        if ge >= total:
            break
        n = ge - g + 1
        free -= n
        q, in_line = divmod(in_line + n, bw)
        n_lines += q
        r = rows.row_of(ge)
        if r != row:
            stall, off, row = stall + off, 0, r
        c = r + stall + off
        if is_drain:
            if in_line:  # the drain closes the open line early
                partial[n_lines] = in_line
                n_lines, in_line = n_lines + 1, 0
            data, drain_end = drain(c)
            free += data
        else:
            off += drain_end - c  # the array waits for the drain to finish
        g = ge + 1
    n = total - g
    if n > 0:
        free -= n
        q, in_line = divmod(in_line + n, bw)
        n_lines += q
    stall += off
    # After the last row, everything left drains back to back.
    if in_line:
        partial[n_lines] = in_line
        n_lines += 1
    cycle = rows.num_rows - 1 + stall
    while drained_to < n_lines:
        _, last = drain(cycle)
        cycle = last + 1
    # Every word written is drained once, so the true DRAM write count is the words written.
    return WriteBufferResult(stall, writes, total, int(start or 0), int(stop or 0), drains)


def ofmap_write_buffer(m: ArrayMapping, size_words: int, bw: int) -> WriteBufferResult:
    """:func:`write_buffer` for a mapping's output stream, in closed form where one exists.

    While the layer writes no more than half the buffer, nothing drains before the last
    cycle (a drain needs more than half occupied): everything drains at the end, one line
    per cycle, and only the last line can be partial. When no row writes more words than
    a drain moves per cycle (always in CALC mode, where the drain moves one array row
    per cycle), :func:`write_buffer_closed` gives the drains by arithmetic. Otherwise
    (USER mode with a bandwidth below the array's width) drains can wait for one
    another and stall the array: the event replay.
    """
    words = m.M * m.N * (1 if m.dataflow == "os" else m.row_fold)
    if words <= size_words - (-(-size_words // 2)):
        last = m.compute_rows - 1
        return WriteBufferResult(
            0, words, words, last, last + ceil_div(words, bw) - 1, ceil_div(ceil_div(words, bw), ceil_div(size_words // 2, bw))
        )
    if OfmapRows(m).max_per_row() <= bw:
        return write_buffer_closed(m, size_words, bw)
    return write_buffer(m.ofmap_rows, size_words, bw)


def ofmap_replay_steps(m: ArrayMapping, size_words: int, bw: int) -> int:
    """Events :func:`ofmap_write_buffer` replays for ``m`` (0 when it answers in closed form).

    The event replay steps once per drain and per stall; both are at most one per half
    buffer of words written, and one per ``bw`` words where rows outpace the drain.
    """
    words = m.M * m.N * (1 if m.dataflow == "os" else m.row_fold)
    if words <= size_words - (-(-size_words // 2)) or OfmapRows(m).max_per_row() <= bw:
        return 0
    return 2 * words // max(1, size_words // 2) + 2


def write_buffer_stepwise(row_counts: list[int], size_words: int, bw: int) -> WriteBufferResult:
    """The plain reference for :func:`write_buffer`: one word at a time, as SCALE-Sim does.

    Slow (a Python step per output word); used by the tests on random inputs.
    """
    active = -(-size_words // 2)
    lines_per_drain = ceil_div(size_words - active, bw)
    lines: list[int] = []  # words in each closed line
    in_line = 0
    free = size_words
    drained_to = 0
    drain_end = 0
    writes = 0
    cycles: list[int] = []
    stall = 0

    def drain(cycle: int) -> int:
        nonlocal drained_to, writes
        end = min(drained_to + lines_per_drain, len(lines))
        n = end - drained_to
        data = n * bw - (bw - lines[end - 1])
        writes += data
        cycles.extend(range(cycle, cycle + n))
        drained_to = end
        return data

    for i, count in enumerate(row_counts):
        cycle = i + stall
        offset = 0
        for _ in range(count):
            cur = cycle + offset
            in_line += 1
            free -= 1
            if in_line == bw:
                lines.append(bw)
                in_line = 0
            if cur < drain_end:
                if free <= 0:
                    offset += drain_end - cur
            elif free < active:
                if in_line:
                    lines.append(in_line)
                    in_line = 0
                free += drain(cur)
                drain_end = cycles[-1]
        stall += offset
    if in_line:
        lines.append(in_line)
    cycle = len(row_counts) - 1 + stall
    while drained_to < len(lines):
        drain(cycle)
        cycle = cycles[-1] + 1
    return WriteBufferResult(stall, writes, sum(row_counts), min(cycles, default=0), max(cycles, default=0), 0)


# ---- the ofmap write buffer in closed form ----------------------------------------------


def _ramp_sum(y: int, width: int) -> int:
    """``sum(min(max(t + 1, 0), width) for t < y)``: entries a skewed column ramp puts in rows ``< y``."""
    if y <= 0:
        return 0
    if y <= width:
        return y * (y + 1) // 2
    return width * (width + 1) // 2 + (y - width) * width


class OfmapRows:
    """The per-row output counts of a mapping (:class:`RowCounts`), answered by arithmetic.

    Every fold writes a skewed block: unskewed rows ``a..b`` of ``c`` used columns, column
    ``j`` delayed by ``j`` rows, so the words in a fold's rows ``< y`` are a difference of
    two ramp sums. Nothing here is stored per row or per fold: a query costs O(log) of the
    fold length, whatever the layer's size.
    """

    def __init__(self, m: ArrayMapping) -> None:
        self.m = m
        self.rows_per_fold = m.rows_per_fold
        self.num_rows = m.compute_rows
        self.c_first, self.c_last = min(m.C, m.Sc), m.Sc - m.C * (m.col_fold - 1)
        if m.dataflow == "os":  # r outputs per column, at the end of the fold (see RowCounts)
            self._span = lambda r: (m.T - 1 + m.R - r, m.T - 1 + m.R - 1)
            self.col_words = m.Sr  # words per used column in one column fold
        else:  # T outputs per column, whatever the row fold
            self._span = lambda r: (2 * m.R - 1, 2 * m.R - 2 + m.T)
            self.col_words = m.T * m.row_fold
        self.total = m.Sc * self.col_words

    def max_per_row(self) -> int:
        """The most words any row writes (the widest fold's height or width, whichever is smaller)."""
        m = self.m
        height = min(m.R, m.Sr) if m.dataflow == "os" else m.T
        return min(self.c_first, height)

    def _fold(self, g: int) -> tuple[int, int, int, int]:
        """(fold index, words before it, used rows, used columns) of the fold holding word ``g``."""
        m = self.m
        per_col_fold = self.c_first * self.col_words
        fc = min(g // per_col_fold, m.col_fold - 1)
        c = self.c_first if fc < m.col_fold - 1 else self.c_last
        base = fc * per_col_fold
        full_r = min(m.R, m.Sr)
        per_fold = (full_r if m.dataflow == "os" else m.T) * c
        fr = min((g - base) // per_fold, m.row_fold - 1)
        r = full_r if fr < m.row_fold - 1 else m.Sr - m.R * (m.row_fold - 1)
        return fc * m.row_fold + fr, base + fr * per_fold, r, c

    def _in_fold(self, y: int, r: int, c: int) -> int:
        a, b = self._span(r)
        return _ramp_sum(y - a, c) - _ramp_sum(y - b - 1, c)

    def row_of(self, g: int) -> int:
        """The row (cycle, without stalls) of output word number ``g``."""
        if not 0 <= g < self.total:
            raise ValueError(f"output word {g} is outside 0..{self.total - 1}")
        f, base, r, c = self._fold(g)
        within = g - base
        lo, hi = 0, self.rows_per_fold - 1  # the last row whose earlier rows hold <= within words
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._in_fold(mid, r, c) <= within:
                lo = mid
            else:
                hi = mid - 1
        return f * self.rows_per_fold + lo


def _drain_step(pending: int, partials: tuple[tuple[int, int], ...], gap: int, bw: int, lines_per_drain: int):
    """``gap`` words written after a drain (the open line starts empty), then the next drain.

    ``pending``: closed lines not yet drained; ``partials``: (index among them, words) of
    the lines a drain closed early. Returns the state after the drain, the words it
    counts and the lines it drains.
    """
    q, rest = divmod(gap, bw)
    pending += q
    if rest:  # the drain closes the open line early
        partials += ((pending, rest),)
        pending += 1
    n = min(lines_per_drain, pending)
    last = dict(partials).get(n - 1, bw)  # only the chunk's last line is counted at its size
    partials = tuple((i - n, s) for i, s in partials if i >= n)
    return pending - n, partials, n * bw - (bw - last), n


def write_buffer_closed(m: ArrayMapping, size_words: int, bw: int) -> WriteBufferResult:
    """:func:`write_buffer` for a mapping whose rows never write more than ``bw`` words, in closed form.

    Then a drain that starts at word ``g`` ends before the write that next leaves the
    buffer more than half full: a drain of ``n`` lines counts ``d > (n - 1) * bw`` words,
    the buffer takes ``d`` writes to fill again, and at most ``bw`` of them fit a cycle,
    the first cycle's share included. So no drain waits for another, nothing stalls, and
    the drains fall at word positions that depend on ``S``, ``bw`` and the words before
    them only, not on the row profile: a drain at word ``g`` counting ``d`` words is
    followed by the next at word ``g + d``. The state between drains (lines left over,
    early-closed ones among them, the next gap) repeats after a drain or two, so whole
    periods are added at once; the row profile is asked only for the cycle of the first
    and the last drain (:class:`OfmapRows`). Cost: O(log) of the fold length.
    """
    if size_words < 2 or bw < 1:
        raise ValueError(f"write buffer needs >= 2 words and bandwidth >= 1, got {size_words}, {bw}")
    rows = OfmapRows(m)
    if rows.max_per_row() > bw:
        raise ValueError(f"write_buffer_closed: rows write up to {rows.max_per_row()} words, above the drain bandwidth {bw}")
    total = rows.total
    active = -(-size_words // 2)
    lines_per_drain = ceil_div(size_words - active, bw)
    pending, partials = 0, ()
    gap = size_words - active + 1  # writes until the buffer is first more than half full
    done = writes = drains = 0  # words written up to the last drain's trigger, words drained, drains
    first = last_n = None
    seen: dict = {}
    while done + gap <= total:
        key = (pending, partials, gap)
        if key in seen:  # periodic from here on: add whole periods
            done0, writes0, drains0 = seen.pop(key)
            k = (total - done) // (done - done0)
            done, writes, drains = done + k * (done - done0), writes + k * (writes - writes0), drains + k * (drains - drains0)
            seen = {}
            if done + gap > total:
                break
        seen[key] = (done, writes, drains)
        done += gap
        first = done - 1 if first is None else first
        pending, partials, gap, last_n = _drain_step(pending, partials, gap, bw, lines_per_drain)
        writes += gap
        drains += 1
    stop = -1 if last_n is None else rows.row_of(done - 1) + last_n - 1
    start = None if first is None else rows.row_of(first)
    # After the last row, the rest drains back to back, one line per cycle.
    tail = partials
    q, rest = divmod(total - done, bw)
    left = pending + q
    if rest:
        tail += ((left, rest),)
        left += 1
    sizes = dict(tail)
    cycle = rows.num_rows - 1
    if left:
        start = cycle if start is None else start
        stop = max(stop, cycle + left - 1)
    for lo in range(0, left, lines_per_drain):
        hi = min(lo + lines_per_drain, left)
        writes += (hi - lo) * bw - (bw - sizes.get(hi - 1, bw))
        drains += 1
    return WriteBufferResult(0, writes, total, int(start or 0), int(max(stop, 0)), drains)


# ---- read side ---------------------------------------------------------------------


def calc_items_per_set(size_words: int) -> int:
    return size_words // CALC_SETS


def calc_window(size_words: int) -> int:
    """Misses after which SCALE-Sim's CALC-mode read window is emptied (about S/2)."""
    return CALC_ACTIVE_SETS * calc_items_per_set(size_words)


def calc_dram_start(unique_words: int, first_request_cycle: int, size_words: int) -> int:
    """Cycle of the first DRAM read of a CALC-mode read buffer (exact).

    If the operand fills the active half, SCALE-Sim back-dates a half-buffer fill at
    10 words/cycle so it ends just before the first request; otherwise it back-dates
    the fill of everything, in whole sets, to end at cycle -1.
    """
    items = calc_items_per_set(size_words)
    if unique_words >= CALC_ACTIVE_SETS * items:
        return first_request_cycle - ceil_div(CALC_PREFETCH_SETS * items, CALC_FILL_BW)
    nsets = ceil_div(unique_words, items)
    return -ceil_div(nsets * items, CALC_FILL_BW)


def calc_dram_reads(
    unique_words: int, stream_words: int, passes: int, block_words: int, block_repeats: int, size_words: int
) -> tuple[int, bool]:
    """DRAM reads of a CALC-mode read buffer and whether the figure is exact (the trivial cases).

    ``unique_words``: distinct words of the operand; ``stream_words``: words the array
    requests; ``passes``: times the fold order sweeps the whole operand; ``block_words``
    and ``block_repeats``: a fold block requested ``block_repeats`` times back to back
    (os filter across row folds).

    Exact when no window is ever emptied (``U`` below ``S/2``) or when every word is
    requested once. Otherwise (estimate): a sweep of the whole operand refetches it
    (it does not fit), a back-to-back repeat of a block refetches it only if the block
    does not fit the window; reuse within a sweep (neighbouring convolution windows)
    is assumed to hit.
    """
    window = calc_window(size_words)
    if unique_words < window or stream_words == unique_words:
        return unique_words, True
    reads = unique_words * passes
    if block_repeats > 1 and block_words >= window:
        reads *= block_repeats
    return reads, False


def user_lines(size_words: int, valid_entries: int) -> tuple[int, int, int]:
    """(words per line, lines the operand occupies, lines the active half holds)."""
    per_line = ceil_div(size_words, CALC_SETS)
    lines = valid_entries // per_line + 1  # SCALE-Sim always appends a last (maybe empty) line
    active_lines = ceil_div(-(-size_words // 2), per_line)
    return per_line, lines, active_lines


def user_fits(size_words: int, valid_entries: int) -> bool:
    """True when SCALE-Sim's USER-mode read buffer holds the whole operand (no miss)."""
    _, lines, active_lines = user_lines(size_words, valid_entries)
    return lines <= active_lines


def user_first_fill(size_words: int, prefetch_entries: int, bw: int) -> int:
    """Words of the first (active-half) fill, padding included: SCALE-Sim's DRAM count when it fits."""
    active = -(-size_words // 2)
    return min(ceil_div(active, bw), ceil_div(prefetch_entries, bw)) * bw


def user_read_estimate(size_words: int, prefetch_entries: int, bw: int, passes: int, compute_rows: int) -> tuple[int, int]:
    """(DRAM words, stall cycles) of a USER-mode read buffer that misses (an estimate).

    The prefetch matrix is streamed ``passes`` times at ``bw`` words per cycle; the
    part of that transfer time the compute cycles cannot hide becomes stalls.
    """
    words = max(user_first_fill(size_words, prefetch_entries, bw), passes * ceil_div(prefetch_entries, bw) * bw)
    stall = max(0, ceil_div(words, bw) - compute_rows)
    return words, stall


def operand_passes(m: ArrayMapping) -> dict[str, int]:
    """How many times the fold order sweeps each whole operand (see dataflow's table)."""
    if m.dataflow == "os":
        return {"ifmap": m.col_fold, "filter": 1}
    if m.dataflow == "ws":
        return {"ifmap": m.col_fold, "filter": 1}
    return {"ifmap": 1, "filter": m.col_fold}
