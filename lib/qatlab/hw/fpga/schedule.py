"""The pipeline's timing without stepping cycles: per-unit schedules in closed form,
composed with max-plus recurrences and evaluated with numpy.

The streaming design is a chain of units (stages): the input source, then per layer
an optional window unit (SWU or DownSampler) and the MVAU. Consecutive stages talk
through FIFOs of elements; a producer pushes words of its width, a consumer pops words
of its width (FINN's data-width converters, folded into the FIFO).

Each unit runs a fixed loop, one iteration per cycle unless stalled, like the
finn-hlslib functions it models:

* source: iteration n writes input word n (one word per cycle);
* MVAU: per output vector, NF = MH/PE neuron folds of SF = MW/SIMD synapse folds;
  iteration (nf, sf) reads input word sf when nf = 0 and writes output word nf after
  its last synapse fold (finn-hlslib ``Matrix_Vector_Activate_Batch``);
* SWU: fill k_h rows (one read per iteration), then per output row a block of
  ``max(write, read)`` iterations, writing that row's windows and reading the next
  stride rows in parallel (finn-hlslib ``ConvolutionInputGenerator``); the per-frame
  iteration count is FINN's SWU cycle formula;
* DownSampler: one read per iteration, written on when the pixel is kept.

Cycle semantics (shared with :mod:`.stream`): a word pushed in cycle t can be popped
from cycle t+1; a push in cycle t needs ``occupancy at the start of t + width <=
depth``. An iteration runs in the first cycle at which its read word is available
(and, with bounded FIFOs, its write has room). With FIFOs deep enough never to block,
iteration n of a stage runs at

    T(n) = n + max(T(-1) + 1, max over reads k <= n of (ready_k - iter_k))

— a running maximum, one numpy ``maximum.accumulate`` per stage per frame. Feeding
each stage's write times (+1) to the next stage as its read-ready times gives every
event time of the pipeline, hence the latency (last output word of frame 0, counted
from the first input word at cycle 0).

FIFO depths: the source is throttled to one frame per initiation interval P (the
slowest stage's iterations per frame: the design's steady state); frames are scheduled
until every stage repeats its previous frame's timing shifted by P (max-plus
periodicity), and each FIFO's depth is the largest ``occupancy + push width`` any push
sees. With those depths nothing ever blocks at that rate, so the stepped simulation
(which does block) reproduces this schedule exactly — the test of both.

Layers that do not chain (the topology leaves out a pooling or padding step between
them) are joined by an implicit zero-latency stage that releases the consumer's
elements in proportion to the producer's (an approximation we only use for timing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .cycles import swu_rtl_cycles
from .folding import LayerFolding
from .geometry import Geometry

NEG = np.iinfo(np.int64).min // 4  # "no constraint" in running maxima


@dataclass
class Stage:
    name: str
    layer: int  # index of the layer (-1: the input source)
    unit: str  # source | swu | ds | mvau
    n_iter: int  # iterations per frame
    read_iter: np.ndarray  # frame-local iteration of each read, increasing
    read_width: int
    write_iter: np.ndarray  # frame-local iteration of each write, increasing
    write_width: int
    in_elems: int
    out_elems: int


def _swu_iters(g: Geometry, ss: int) -> tuple[int, np.ndarray, np.ndarray]:
    cw = g.channels // ss
    r = g.ifm_w * cw  # words per input row
    fill = g.k_h * r
    wb = g.ofm_w * g.k_w * g.k_h * cw
    rb = g.stride_h * r
    bl = max(wb, rb)
    n_img = fill + g.ofm_h * bl
    j = np.arange(g.ifm_h * r, dtype=np.int64)
    jj = j - fill
    reads = np.where(j < fill, j, fill + (jj // rb) * bl + jj % rb)
    m = np.arange(g.ofm_h * wb, dtype=np.int64)
    writes = fill + (m // wb) * bl + m % wb
    return n_img, reads, writes


def _swu_rtl_iters(g: Geometry, ss: int, parallel: bool) -> tuple[int, np.ndarray, np.ndarray, int]:
    """The RTL window's loop (FINN ``ConvolutionInputGenerator_rtl``): iterations per
    image equal FINN's cycle count. Default style: the same read/write blocks as the HLS
    loop after a shorter fill (k_h - 1 rows and k_w pixels), blocks of ``stride_w`` rows
    as FINN counts them. Parallel window: one pixel read per iteration, each window
    written (all k_h·k_w·C elements in one word) two iterations after its last pixel.
    1D images: reads one per iteration, writes in the last iterations. Returns (n,
    reads, writes, write width)."""
    cw = g.channels // ss
    n_img = swu_rtl_cycles(g.ifm_h, g.ifm_w, g.channels, g.k_h, g.k_w, g.stride_h, g.stride_w, g.ofm_h, g.ofm_w, ss, parallel)
    n_reads = g.ifm_h * g.ifm_w * cw
    if parallel:
        oy = np.arange(g.ofm_h, dtype=np.int64)[:, None]
        ox = np.arange(g.ofm_w, dtype=np.int64)[None, :]
        last = (oy * g.stride_h + g.k_h - 1) * g.ifm_w + ox * g.stride_w + g.k_w - 1
        return n_img, np.arange(n_reads, dtype=np.int64), (last.ravel() + 2), g.k_h * g.k_w * ss
    if g.ifm_h == 1 or g.ifm_w == 1:
        n_writes = g.ofm_h * g.ofm_w * g.k_h * g.k_w * cw
        j = np.arange(n_reads, dtype=np.int64)
        # More pixels than iterations only with a stride above the kernel: spread them.
        reads = j if n_reads <= n_img else (j * (n_img - 1)) // max(n_reads - 1, 1)
        return n_img, reads, np.arange(n_img - n_writes, n_img, dtype=np.int64), ss
    r = g.ifm_w * cw
    fill = ((g.k_h - 1) * g.ifm_w + g.k_w) * cw
    wb = g.ofm_w * g.k_w * g.k_h * cw
    rb = g.stride_w * r
    bl = max(wb, rb)
    j = np.arange(n_reads, dtype=np.int64)
    jj = j - fill
    reads = np.where(j < fill, j, fill + (jj // rb) * bl + jj % rb)
    m = np.arange(g.ofm_h * wb, dtype=np.int64)
    writes = fill + (m // wb) * bl + m % wb
    return n_img, reads, writes, ss


def _ds_iters(g: Geometry, ss: int) -> tuple[int, np.ndarray, np.ndarray]:
    cw = g.channels // ss
    n_img = g.ifm_h * g.ifm_w * cw
    j = np.arange(n_img, dtype=np.int64)
    pix = j // cw
    h, w = pix // g.ifm_w, pix % g.ifm_w
    keep = (h % g.stride_h == 0) & (w % g.stride_w == 0) & (h // g.stride_h < g.ofm_h) & (w // g.stride_w < g.ofm_w)
    return n_img, j, j[keep]


def _per_batch(n_img: int, reads: np.ndarray, writes: np.ndarray, batch: int) -> tuple[int, np.ndarray, np.ndarray]:
    if batch == 1:
        return n_img, reads, writes
    off = np.arange(batch, dtype=np.int64)[:, None] * n_img
    return n_img * batch, (reads[None, :] + off).ravel(), (writes[None, :] + off).ravel()


def build_stages(geoms: Sequence[Geometry], folds: Sequence[LayerFolding], *, rtl_window: bool = False) -> list[Stage]:
    """The chain of units of a folded network (the source first). ``rtl_window``: the
    sliding windows are FINN's RTL ones (else the HLS loop, which :mod:`.stream` steps)."""
    stages: list[Stage] = []
    for i, (g, f) in enumerate(zip(geoms, folds)):
        if g.unit in ("swu", "ds"):
            ss = int(f.swu_simd or 1)
            ww = ss
            if g.unit == "swu" and rtl_window:
                n_img, r, w, ww = _swu_rtl_iters(g, ss, bool(f.parallel_window))
            else:
                n_img, r, w = (_swu_iters if g.unit == "swu" else _ds_iters)(g, ss)
                if g.unit == "ds" and rtl_window:
                    n_img += 2  # FINN's RTL 1x1 window: two cycles more per image
            n, r, w = _per_batch(n_img, r, w, g.batch)
            out = (g.pixels * g.mw) if g.unit == "swu" else g.pixels * g.channels
            stages.append(Stage(f"{g.name}.{g.unit}", i, g.unit, n, r, ss, w, ww, g.in_elems, out))
        nf, sf = g.mh // f.pe, g.mw // f.simd
        per = nf * sf
        pix = np.arange(g.pixels, dtype=np.int64)[:, None] * per
        r = (pix + np.arange(sf, dtype=np.int64)[None, :]).ravel()
        w = (pix + np.arange(nf, dtype=np.int64)[None, :] * sf + (sf - 1)).ravel()
        in_elems = g.pixels * g.mw if g.unit != "none" else g.in_elems
        stages.append(Stage(f"{g.name}.mvau", i, "mvau", g.pixels * per, r, f.simd, w, f.pe, in_elems, g.out_elems))
    first = stages[0]
    words = first.in_elems // first.read_width
    src = Stage(
        "input", -1, "source", words, np.zeros(1, dtype=np.int64), 1, np.arange(words, dtype=np.int64), first.read_width, 0, first.in_elems
    )
    return [src] + stages


def _needed_producer_word(k: np.ndarray, wc: int, wp: int, e_c: int, e_p: int) -> np.ndarray:
    """Index of the producer word whose push makes consumer word k available: the
    consumer's first (k+1)·wc elements need ceil((k+1)·wc·E_p / E_c) producer elements."""
    need = -(-((k + 1) * wc * e_p) // e_c)  # ceil division, producer elements
    return -(-need // wp) - 1


def _write_read_index(stage: Stage) -> np.ndarray:
    """For each write, the index of the last read at or before its iteration (-1: none)."""
    return np.searchsorted(stage.read_iter, stage.write_iter, side="right") - 1


def _run_stage(stage: Stage, ready: np.ndarray, carry: int, widx: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Absolute read and write cycles of one frame and its last iteration's cycle.

    ``ready``: first cycle at which each read's word is available (absolute);
    ``carry``: the cycle of the previous frame's last iteration (-1 at start), the
    iterations of this frame being numbered from 0; ``widx``: :func:`_write_read_index`.
    """
    base = ready - stage.read_iter
    cm = np.maximum.accumulate(base) if base.size else base
    start = carry + 1
    t_read = stage.read_iter + np.maximum(start, cm)
    cmw = np.where(widx >= 0, cm[np.clip(widx, 0, None)] if cm.size else NEG, NEG)
    t_write = stage.write_iter + np.maximum(start, cmw)
    last = stage.n_iter - 1 + max(start, int(cm[-1]) if cm.size else NEG)
    return t_read, t_write, last


@dataclass
class Schedule:
    stages: list[Stage]
    period: int  # initiation interval P: cycles per frame of the slowest stage
    latency: int  # cycles from the first input word (cycle 0) to the last output word of frame 0, inclusive
    fifo_depth: list[int]  # elements, FIFO k between stage k and k+1 (consumer elements where not chained)
    frames: int  # frames scheduled (until periodic)
    converged: bool
    stage_first_write: list[int] = field(default_factory=list)  # frame 0, per stage
    stage_last_write: list[int] = field(default_factory=list)


def _fifo_requirement(push_t: np.ndarray, pop_t: np.ndarray, wp: int, wc: int, e_p: int, e_c: int) -> int:
    """max over pushes of (occupancy at the start of the push cycle + pushed elements),
    in consumer elements; pushes are one per cycle, in order.

    Between two pops the occupancy only grows, so the maximum is at the last push
    before some pop (or the very last push): with fewer pops than pushes only those
    candidates are evaluated."""
    if push_t.size == 0:
        return 0
    if pop_t.size < push_t.size:
        cand = np.searchsorted(push_t, pop_t, side="right") - 1  # non-decreasing
        cand = np.concatenate([cand[cand >= 0], [push_t.size - 1]]).astype(np.int64)
        i = cand[np.concatenate([[True], cand[1:] != cand[:-1]])]
    else:
        i = np.arange(push_t.size, dtype=np.int64)
    before = (i * wp * e_c) // e_p
    delta = ((i + 1) * wp * e_c) // e_p - before
    popped = np.searchsorted(pop_t, push_t[i], side="left").astype(np.int64) * wc
    return int((before - popped + delta).max())


def compute_schedule(stages: list[Stage], *, fifo_depths: bool = True, max_frames: int | None = None) -> Schedule:
    """Latency of frame 0 and (if asked) the FIFO depths that never block at full rate."""
    period = max(s.n_iter for s in stages[1:])
    n = len(stages)
    cap = max_frames if max_frames is not None else min(n + 3, 16)
    frames = 1 if not fifo_depths else cap
    carries = [-1] * n
    pushes: list[list[np.ndarray]] = [[] for _ in range(n)]
    pops: list[list[np.ndarray]] = [[] for _ in range(n)]
    prev_rel: list[np.ndarray | None] = [None] * n
    prev_carry: list[int | None] = [None] * n
    stable_run = 0
    latency = 0
    first_w: list[int] = []
    last_w: list[int] = []
    done = 0
    converged = not fifo_depths
    # Which producer word each read waits for is the same every frame: compute once.
    widx = [_write_read_index(st) for st in stages]
    need: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for s_idx in range(1, n):
        st, up = stages[s_idx], stages[s_idx - 1]
        k = np.arange(st.read_iter.size, dtype=np.int64)
        need.append(_needed_producer_word(k, st.read_width, up.write_width, st.in_elems, up.out_elems))
    for f in range(frames):
        same = True
        t_w_prev = None
        for s_idx, st in enumerate(stages):
            if st.unit == "source":
                ready = np.array([f * period], dtype=np.int64)
            else:
                ready = t_w_prev[need[s_idx]] + 1  # type: ignore[index]
            t_r, t_w, last = _run_stage(st, ready, carries[s_idx], widx[s_idx])
            carries[s_idx] = last
            if st.unit != "source":
                pops[s_idx].append(t_r)
            pushes[s_idx].append(t_w)
            # A stage repeats when its writes and its last iteration (the state the next
            # frame starts from) are the previous frame's shifted by P.
            rel = t_w - f * period
            if prev_carry[s_idx] != last - f * period or prev_rel[s_idx] is None or not np.array_equal(prev_rel[s_idx], rel):
                same = False
            prev_rel[s_idx], prev_carry[s_idx] = rel, last - f * period
            t_w_prev = t_w
            if f == 0:
                first_w.append(int(t_w[0]) if t_w.size else 0)
                last_w.append(int(t_w[-1]) if t_w.size else 0)
        if f == 0:
            latency = last_w[-1] + 1
        done = f + 1
        stable_run = stable_run + 1 if (same and f > 0) else 0
        if fifo_depths and stable_run >= 2:
            converged = True
            break
    depths: list[int] = []
    if fifo_depths:
        for k in range(n - 1):
            prod, cons = stages[k], stages[k + 1]
            pu, po = list(pushes[k]), list(pops[k + 1])
            if converged and pu[-1].size and po[-1].size:
                # Later frames repeat the last one shifted by P. A FIFO whose consumer lags
                # its producer by several frames sees pops of older frames at a push: extend
                # the periodic pattern over that lag so those pushes are counted too.
                lag = -(-(int(po[-1][-1]) - int(pu[-1][0])) // period) + 1
                pu += [pu[-1] + j * period for j in range(1, lag + 1)]
                po += [po[-1] + j * period for j in range(1, lag + 1)]
            push_t = np.concatenate(pu)
            pop_t = np.concatenate(po)
            depths.append(_fifo_requirement(push_t, pop_t, prod.write_width, cons.read_width, prod.out_elems, cons.in_elems))
    return Schedule(stages, period, latency, depths, done, converged, first_w, last_w)
