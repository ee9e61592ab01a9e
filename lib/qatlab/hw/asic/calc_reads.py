"""Exact CALC-mode DRAM read counts without replaying addresses.

SCALE-Sim's CALC-mode read buffer (the reference replay is
:func:`qatlab.hw.asic.trace.epoch_misses`) behaves as a sequence of *epochs*: a
request misses iff its word has not been fetched since the epoch began, and the epoch
ends right after its ``W``-th miss (``W = 50 * floor(S / 100)``, half of the buffer's
100 sets), when the window restarts empty.

Most operand streams are made of *blocks*: a block is a list of distinct words, always
requested in the same order, and two blocks are either the same block or share no
word. Then the epochs can be followed block by block, not word by word:

- a block never seen before misses entirely: ``D`` misses, the epoch count ``e``
  becomes ``e + D`` (restarting every ``W``);
- a block requested again right after itself (``r`` times back to back): if the first
  pass left all of it in the epoch (``e + D < W``) every later pass hits. Otherwise the
  epoch holds the pass's last ``j = (e + D) mod W`` words; if ``D < W`` the second pass
  misses the other ``D - j`` (no restart fits in them) and leaves the whole block
  resident, so later passes hit; if ``D >= W`` a restart falls inside every pass before
  its resident suffix is reached, so every pass misses all ``D`` words.

Which streams are block streams (fold order: column folds outer, row folds inner):

- os filter: column fold ``c`` requests its ``K x C`` filter slab once per row fold,
  back to back; slabs of different column folds are disjoint.
- os and ws ifmap, is filter: one pass over all row folds requests each word of the
  whole operand once, in an order that does not depend on the column fold; the pass is
  repeated once per column fold: one block of ``U`` words requested ``col_fold`` times.
- ws filter and is ifmap: the stationary operand, each word requested once.

An ifmap is a block stream when no two windows share an input word: a GEMM, or a
convolution whose filter is no larger than its stride along both axes. Overlapping
convolution windows re-request words inside a pass; :func:`ifmap_is_block_stream`
says when the closed form applies, and otherwise the caller walks that one operand fold
by fold (os: :func:`qatlab.hw.asic.trace.os_ifmap_reads_by_folds`) or replays it.
Cost: O(column folds) at most, with a shortcut once the epoch count repeats.
"""

from __future__ import annotations

from qatlab.hw.asic.dataflow import ArrayMapping
from qatlab.hw.asic.memory import calc_window
from qatlab.hw.workload import Layer


def block_misses(d: int, r: int, e: int, window: int) -> tuple[int, int]:
    """(misses, epoch count after) for a new block of ``d`` words requested ``r`` times back to back.

    ``e`` is the epoch count (misses since the last restart) before the block.
    """
    if d < 1 or r < 1 or window < 1 or not 0 <= e < window:
        raise ValueError(f"block_misses: need d, r, window >= 1 and 0 <= e < window; got {d}, {r}, {e}, {window}")
    if d >= window:
        return d * r, (e + d * r) % window
    if e + d < window:
        return d, e + d
    if r == 1:
        return d, e + d - window
    j = e + d - window  # resident suffix of the first pass
    return d + (d - j), d


def blocks_misses(blocks: list[tuple[int, int, int]], window: int) -> int:
    """Misses over runs of fresh blocks: ``(d, r, count)`` = ``count`` disjoint blocks of ``d`` words, each ``r`` times.

    Within a run the epoch count evolves by a fixed map, so once a count repeats the
    rest of the run is periodic and is added up without visiting every block.
    """
    total, e = 0, 0
    for d, r, count in blocks:
        seen: dict[int, tuple[int, int]] = {}  # epoch count -> (blocks done, misses so far)
        done = 0
        while done < count:
            if e in seen:
                first, misses_then = seen[e]
                period, per = done - first, total - misses_then
                skip = (count - done) // period
                total += skip * per
                done += skip * period
                seen = {}
                if done == count:
                    break
            seen[e] = (done, total)
            n, e = block_misses(d, r, e, window)
            total += n
            done += 1
    return total


def ifmap_is_block_stream(layer: Layer) -> bool:
    """True when no two ifmap-matrix entries of ``layer`` name the same input word."""
    if layer.kind == "gemm":
        return True
    return layer.filter_h <= layer.stride_h and layer.filter_w <= layer.stride_w


def calc_ifmap_reads(m: ArrayMapping, unique_words: int, size_words: int) -> int:
    """DRAM ifmap reads of SCALE-Sim's CALC mode for a block-stream ifmap (see the module doc)."""
    reps = 1 if m.dataflow == "is" else m.col_fold  # is: the stationary operand
    return blocks_misses([(unique_words, reps, 1)], calc_window(size_words))


def calc_filter_reads(m: ArrayMapping, size_words: int) -> int:
    """DRAM filter reads of SCALE-Sim's CALC mode (filters are always block streams)."""
    w = calc_window(size_words)
    if m.dataflow == "ws":  # stationary
        return blocks_misses([(m.K * m.N, 1, 1)], w)
    if m.dataflow == "is":
        return blocks_misses([(m.K * m.N, m.col_fold, 1)], w)
    cu = m.col_used()
    runs = [(m.K * int(cu[0]), m.row_fold, m.col_fold - 1)] if m.col_fold > 1 else []
    return blocks_misses(runs + [(m.K * int(cu[-1]), m.row_fold, 1)], w)


__all__ = ["block_misses", "blocks_misses", "calc_filter_reads", "calc_ifmap_reads", "ifmap_is_block_stream"]
