"""Cycle-stepped streaming simulation: units as processes, bounded FIFOs, real data.

Every cycle each unit tries one iteration of its loop (the loops of
:mod:`.schedule`): it needs its read word in its input FIFO (pushed in an earlier
cycle) and room for its write word in its output FIFO (judged on the occupancy at the
start of the cycle); otherwise it stalls, starved or blocked. Units are evaluated
from source to sink and pushes are committed at the end of the cycle, which gives
exactly those semantics without ordering effects.

The units compute: the sliding-window unit (FINN's HLS loop, or with
``rtl_window=True`` the RTL generator's default and parallel-window loops) keeps a
circular line buffer of ``k_h + stride`` rows (FINN's SWU buffer) and checks every
element it emits has been read; the MVAU multiplies PE x SIMD blocks of the integer weights, accumulates (exact,
or in a narrower wrapping/saturating accumulator) and applies the activation as FINN
does, with thresholds (:func:`.activation.thresholds`) rather than the reference's
multiplier — so equality with :mod:`.reference` is a real check of both.

This is a Python loop, meant for small networks: its speed is recorded by
``benchmarks/fpga.py`` as cycles simulated per second.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from qatlab.hw.workload import Layer

from .accumulator import int_range, narrow
from .activation import thresholds
from .errors import ChainError, DeadlockError, FoldingError
from .folding import LayerFolding, resolve_folding
from .geometry import Geometry
from .reference import IntLayer, acc_is_signed, check_chain, validate_params
from .schedule import Stage, build_stages, compute_schedule


class Fifo:
    """An element FIFO with one producer and one consumer (capacity None: unbounded)."""

    __slots__ = ("name", "depth", "data", "pending", "peak", "blocked", "pushes")

    def __init__(self, name: str, depth: int | None) -> None:
        self.name = name
        self.depth = depth
        self.data: deque[int] = deque()
        self.pending: list[int] = []
        self.peak = 0  # largest (occupancy at the start of a push cycle + pushed elements)
        self.blocked = 0
        self.pushes: list[int] = []  # push cycles (kept for the sink only)

    def room(self, w: int) -> bool:
        # Called before the consumer runs in this cycle: len(data) is the start-of-cycle occupancy.
        if self.depth is None or len(self.data) + w <= self.depth:
            return True
        self.blocked += 1
        return False

    def push(self, values: list[int]) -> None:
        self.peak = max(self.peak, len(self.data) + len(values))
        self.pending.extend(values)

    def pop(self, w: int) -> list[int]:
        d = self.data
        return [d.popleft() for _ in range(w)]

    def commit(self) -> None:
        if self.pending:
            self.data.extend(self.pending)
            self.pending.clear()


class _Unit:
    name: str
    starved = 0
    done = False

    def step(self, t: int) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class _Source(_Unit):
    def __init__(self, frames: np.ndarray, width: int, out: Fifo, period: int | None) -> None:
        self.name = "input"
        self.words = [f.reshape(-1, width).tolist() for f in frames]
        self.out = out
        self.period = period  # None: as fast as the FIFO takes words
        self.f = 0
        self.i = 0
        self.starved = 0
        self.done = len(self.words) == 0

    def next_start(self) -> int | None:
        return None if self.done or self.period is None else self.f * self.period

    def step(self, t: int) -> bool:
        if self.done:
            return False
        if self.period is not None and self.i == 0 and t < self.f * self.period:
            return False
        w = self.words[self.f][self.i]
        if not self.out.room(len(w)):
            return False
        self.out.push(w)
        self.i += 1
        if self.i == len(self.words[self.f]):
            self.f, self.i = self.f + 1, 0
            self.done = self.f == len(self.words)
        return True


class _Swu(_Unit):
    """The sliding window's loop: FINN's HLS one, or (``rtl``) the RTL generator's default
    style (a shorter fill, blocks of ``stride_w`` rows) or its parallel-window style (a
    pixel in per iteration, a whole window out two iterations after its last pixel)."""

    def __init__(self, g: Geometry, ss: int, inp: Fifo, out: Fifo, frames: int, rtl: bool = False, parallel: bool = False) -> None:
        self.name = f"{g.name}.swu"
        self.g, self.ss, self.inp, self.out = g, ss, inp, out
        self.parallel = rtl and parallel
        self.cw = g.channels // ss
        self.row_words = g.ifm_w * self.cw
        self.total_reads = g.ifm_h * self.row_words
        if self.parallel:
            oy = np.arange(g.ofm_h)[:, None]
            ox = np.arange(g.ofm_w)[None, :]
            last = (oy * g.stride_h + g.k_h - 1) * g.ifm_w + ox * g.stride_w + g.k_w - 1
            self.window_at = {int(t) + 2: k for k, t in enumerate(last.ravel())}
            self.n_img = self.total_reads + 2
        else:
            self.fill = ((g.k_h - 1) * g.ifm_w + g.k_w) * self.cw if rtl else g.k_h * self.row_words
            self.wb = g.ofm_w * g.k_w * g.k_h * self.cw
            self.rb = (g.stride_w if rtl else g.stride_h) * self.row_words
            self.bl = max(self.wb, self.rb)
            self.n_img = self.fill + g.ofm_h * self.bl
        self.rows = g.k_h + g.stride_h  # FINN's line buffer: k + stride rows
        self.buf = np.zeros((self.rows, g.ifm_w, g.channels), dtype=np.int64)
        self.images = frames * g.batch
        self._reset()
        self.img = 0
        self.starved = 0
        self.done = self.images == 0

    def _reset(self) -> None:
        self.i = 0
        self.reads = 0
        self.tag = [-1] * self.rows
        self.filled = [0] * self.rows  # words of the tagged row read so far

    def _element(self, row: int, col: int, cc: int) -> list[int]:
        """The ``cc``-th SIMD group of pixel (row, col), checked to have been read."""
        slot = row % self.rows
        if self.tag[slot] != row or self.filled[slot] <= col * self.cw + cc:  # pragma: no cover - a schedule bug
            raise AssertionError(f"{self.name}: pixel ({row}, {col}) not yet in the {self.rows}-row line buffer")
        return self.buf[slot, col, cc * self.ss : (cc + 1) * self.ss].tolist()

    def _plan(self) -> tuple[bool, list[tuple[int, int, int]] | None]:
        """This iteration's read flag and the (row, col, group) elements it writes."""
        g, i = self.g, self.i
        if self.parallel:
            k = self.window_at.get(i)
            rd = i < self.total_reads
            if k is None:
                return rd, None
            oy, ox = divmod(k, g.ofm_w)
            taps = [(oy * g.stride_h + kh, ox * g.stride_w + kw, 0) for kh in range(g.k_h) for kw in range(g.k_w)]
            return rd, taps
        if i < self.fill:
            return True, None
        b, k = divmod(i - self.fill, self.bl)
        rd = k < self.rb and self.reads < self.total_reads
        if k >= self.wb:
            return rd, None
        ow, rem = divmod(k, g.k_h * g.k_w * self.cw)
        kpos, cc = divmod(rem, self.cw)
        kh, kw = divmod(kpos, g.k_w)
        return rd, [(b * g.stride_h + kh, ow * g.stride_w + kw, cc)]

    def step(self, t: int) -> bool:
        if self.done:
            return False
        ss = self.ss
        rd, taps = self._plan()
        if rd and len(self.inp.data) < ss:
            self.starved += 1
            return False
        if taps is not None and not self.out.room(ss * len(taps)):
            return False
        if rd:
            vals = self.inp.pop(ss)
            row, rem = divmod(self.reads, self.row_words)
            col, cc = divmod(rem, self.cw)
            slot = row % self.rows
            if rem == 0:
                self.tag[slot], self.filled[slot] = row, 0
            self.buf[slot, col, cc * ss : (cc + 1) * ss] = vals
            self.filled[slot] += 1
            self.reads += 1
        if taps is not None:
            self.out.push([v for row, col, cc in taps for v in self._element(row, col, cc)])
        self.i += 1
        if self.i == self.n_img:
            self.img += 1
            self._reset()
            self.done = self.img == self.images
        return True


class _Ds(_Unit):
    """FINN's DownSampler; with ``rtl`` the 1x1 RTL window that replaces it in finn-plus,
    two idle iterations longer per image."""

    def __init__(self, g: Geometry, ss: int, inp: Fifo, out: Fifo, frames: int, rtl: bool = False) -> None:
        self.name = f"{g.name}.ds"
        self.g, self.ss, self.inp, self.out = g, ss, inp, out
        self.cw = g.channels // ss
        self.n_reads = g.ifm_h * g.ifm_w * self.cw
        self.n_img = self.n_reads + (2 if rtl else 0)
        self.images = frames * g.batch
        self.i = 0
        self.img = 0
        self.starved = 0
        self.done = self.images == 0

    def step(self, t: int) -> bool:
        if self.done:
            return False
        g, ss = self.g, self.ss
        if self.i >= self.n_reads:
            self._advance()
            return True
        pix = self.i // self.cw
        h, w = divmod(pix, g.ifm_w)
        keep = h % g.stride_h == 0 and w % g.stride_w == 0 and h // g.stride_h < g.ofm_h and w // g.stride_w < g.ofm_w
        if len(self.inp.data) < ss:
            self.starved += 1
            return False
        if keep and not self.out.room(ss):
            return False
        vals = self.inp.pop(ss)
        if keep:
            self.out.push(vals)
        self._advance()
        return True

    def _advance(self) -> None:
        self.i += 1
        if self.i == self.n_img:
            self.i = 0
            self.img += 1
            self.done = self.img == self.images


class _Mvau(_Unit):
    def __init__(
        self,
        g: Geometry,
        f: LayerFolding,
        p: IntLayer,
        inp: Fifo,
        out: Fifo,
        frames: int,
        acc_bits: int | None,
        acc_mode: str,
        acc_signed: bool,
    ) -> None:
        self.name = f"{g.name}.mvau"
        self.g, self.inp, self.out = g, inp, out
        self.pe, self.simd = f.pe, f.simd
        self.nf, self.sf = g.mh // f.pe, g.mw // f.simd
        w = np.asarray(p.weights, dtype=np.int64)
        # Row r of W goes to PE lane r % PE at neuron fold r // PE (FINN's interleaving).
        self.w = w.reshape(self.nf, self.pe, self.sf, self.simd).transpose(0, 2, 1, 3).copy()
        self.inbuf = np.zeros(g.mw, dtype=np.int64)
        self.acc = np.zeros(self.pe, dtype=np.int64)
        self.acc_bits, self.acc_mode, self.acc_signed = acc_bits, acc_mode, acc_signed
        self.bias = None if p.bias is None else np.asarray(p.bias, dtype=np.int64)
        if p.multiplier is not None:
            self.thr = thresholds(p.multiplier, p.bias, p.zero_point, p.qmin, p.qmax)
            self.qmin = p.qmin
        else:
            self.thr = None
            self.qmin = 0
        self.vectors = frames * g.pixels
        self.v = self.n = self.s = 0
        self.starved = 0
        self.done = self.vectors == 0

    def step(self, t: int) -> bool:
        if self.done:
            return False
        n, s, simd, pe = self.n, self.s, self.simd, self.pe
        rd = n == 0
        wr = s == self.sf - 1
        if rd and len(self.inp.data) < simd:
            self.starved += 1
            return False
        if wr and not self.out.room(pe):
            return False
        if rd:
            self.inbuf[s * simd : (s + 1) * simd] = self.inp.pop(simd)
        partial = self.w[n, s] @ self.inbuf[s * simd : (s + 1) * simd]
        acc = partial if s == 0 else self.acc + partial
        if self.acc_bits is not None:
            acc = narrow(acc, self.acc_bits, self.acc_mode, self.acc_signed)
        self.acc = acc
        if wr:
            lo, hi = n * pe, (n + 1) * pe
            if self.thr is not None:
                y = self.qmin + (acc[:, None] >= self.thr[lo:hi]).sum(axis=1)
            else:
                y = acc if self.bias is None else acc + self.bias[lo:hi]
            self.out.push(y.tolist())
        self.s += 1
        if self.s == self.sf:
            self.s = 0
            self.n += 1
            if self.n == self.nf:
                self.n = 0
                self.v += 1
                self.done = self.v == self.vectors
        return True


@dataclass
class StreamResult:
    """What the stepped simulation measured."""

    outputs: np.ndarray  # [frames, pixels, MH] of the last layer
    frame_done: list[int]  # cycle count at which each frame's last output word was out
    latency_cycles: int  # frame 0, from the first input word at cycle 0
    # between the last two frames (None with one frame). Frame f ends no earlier than
    # f·P after frame 0 and the offset never shrinks, so early intervals can only be
    # longer than the steady one: run a few frames (4 settle every case the tests draw).
    interval_cycles: int | None
    cycles: int
    wall_s: float
    fifo_depths: list[int | None]
    fifo_peak: list[int]
    fifo_blocked: list[int]
    starved: dict[str, int] = field(default_factory=dict)
    stage_names: list[str] = field(default_factory=list)

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.wall_s if self.wall_s > 0 else float("inf")


def simulate(
    layers: Sequence[Layer],
    params: Sequence[IntLayer],
    folding: Mapping[str, LayerFolding] | Sequence[LayerFolding],
    inputs: np.ndarray,
    *,
    fifo_depths: str | int | Sequence[int] | None = "auto",
    throttle: bool = False,
    acc_bits: int | Sequence[int | None] | None = None,
    acc_mode: str = "wrap",
    max_cycles: int | None = None,
    rtl_window: bool = False,
) -> StreamResult:
    """Run ``inputs`` (frames of the first layer's input codes, [F, ...] or one frame)
    through the folded network cycle by cycle.

    ``fifo_depths``: ``"auto"`` the depths of :func:`.schedule.compute_schedule` (never
    blocking at full rate), an int for every FIFO, one per FIFO, or None (unbounded).
    ``throttle``: feed one frame per initiation interval (the design's steady rate)
    instead of as fast as the first FIFO takes words. ``acc_bits``: implement
    narrower accumulators (one width, or one per layer) that wrap or saturate.
    ``rtl_window``: step FINN's RTL sliding window (default or parallel style, as the
    folding resolves it) instead of the HLS one, as the FINN cost model times it;
    only 2D windows (a 1D one is timed by :mod:`.schedule` but not stepped).
    """
    geoms = validate_params(layers, params)
    check_chain(geoms)
    if isinstance(folding, Mapping):
        folds = resolve_folding(geoms, folding)
    else:
        if len(folding) != len(geoms):
            raise FoldingError(f"{len(folding)} foldings for {len(geoms)} layers")
        folds = resolve_folding(geoms, {g.name: f for g, f in zip(geoms, folding)})
    x = np.asarray(inputs)
    n_in = geoms[0].in_elems
    if x.size == n_in:
        x = x.reshape(1, n_in)
    elif x.ndim >= 1 and x.size == x.shape[0] * n_in:
        x = x.reshape(x.shape[0], n_in)
    else:
        raise ValueError(f"inputs: expected frames of {n_in} elements (layer {geoms[0].name!r}), got shape {x.shape}")
    lo, hi = int_range(layers[0].a_bits, params[0].in_signed)
    if x.size and (int(x.min()) < lo or int(x.max()) > hi):
        raise ValueError(f"input codes span [{int(x.min())}, {int(x.max())}], outside [{lo}, {hi}]")
    frames = x.shape[0]
    if rtl_window:
        flat = [g.name for g in geoms if g.unit == "swu" and (g.ifm_h == 1 or g.ifm_w == 1)]
        if flat:
            raise ChainError(f"the stepped RTL window runs 2D windows only; 1D: {', '.join(flat)}")
    stages: list[Stage] = build_stages(geoms, folds, rtl_window=rtl_window)
    n_fifo = len(stages) - 1
    period = max(s.n_iter for s in stages[1:])
    if isinstance(fifo_depths, str):
        if fifo_depths != "auto":
            raise ValueError(f"fifo_depths: 'auto', an int, a list or None, got {fifo_depths!r}")
        depths: list[int | None] = list(compute_schedule(stages, fifo_depths=True).fifo_depth)
    elif fifo_depths is None:
        depths = [None] * n_fifo
    elif isinstance(fifo_depths, int):
        depths = [fifo_depths] * n_fifo
    else:
        depths = list(fifo_depths)
        if len(depths) != n_fifo:
            raise ValueError(f"fifo_depths: {n_fifo} FIFOs in this design, got {len(depths)} depths")
    bits = list(acc_bits) if isinstance(acc_bits, (list, tuple)) else [acc_bits] * len(layers)
    fifos = [Fifo(f"{stages[k].name}->{stages[k + 1].name}", depths[k]) for k in range(n_fifo)]
    sink = Fifo(f"{stages[-1].name}->output", None)
    outs = fifos + [sink]
    units: list[_Unit] = [_Source(x.astype(np.int64), stages[0].write_width, outs[0], period if throttle else None)]
    for k, st in enumerate(stages[1:], start=1):
        g, f, p = geoms[st.layer], folds[st.layer], params[st.layer]
        inp, out = outs[k - 1], outs[k]
        if st.unit == "swu":
            units.append(_Swu(g, int(f.swu_simd or 1), inp, out, frames, rtl_window, bool(f.parallel_window)))
        elif st.unit == "ds":
            units.append(_Ds(g, int(f.swu_simd or 1), inp, out, frames, rtl_window))
        else:
            signed = acc_is_signed(layers[st.layer], p)
            units.append(_Mvau(g, f, p, inp, out, frames, bits[st.layer], acc_mode, signed))
    last = geoms[-1]
    words_per_frame = last.out_elems // folds[-1].pe
    t = 0
    t0 = time.perf_counter()
    limit = max_cycles if max_cycles is not None else 50 * (period * (frames + 2) + sum(s.n_iter for s in stages))
    source = units[0]
    while not all(u.done for u in units):
        progressed = False
        for u in units:
            if u.step(t):
                progressed = True
        for q in outs:
            if q.pending:
                if q is sink:
                    sink.pushes.append(t)
                q.commit()
        if not progressed:
            nxt = source.next_start() if isinstance(source, _Source) else None
            if nxt is not None and nxt > t:
                # Only the source's clock can change anything: skip the idle cycles. (A unit
                # that is truly stuck stays stuck and is reported once the source moves on.)
                t = nxt
                continue
            stuck = [q.name for q in fifos if q.depth is not None and q.blocked]
            raise DeadlockError(
                f"simulation deadlocked at cycle {t}: no unit can move; FIFOs that blocked a producer: "
                f"{', '.join(stuck) or 'none'} (depths {depths})"
            )
        t += 1
        if t > limit:
            raise DeadlockError(f"simulation passed {limit} cycles without finishing (max_cycles)")
    wall = time.perf_counter() - t0
    out_vals = np.array(list(sink.data), dtype=np.int64).reshape(frames, last.pixels, last.mh)
    # The last unit pushes at most one word a cycle; frame f ends with word (f+1)·words - 1.
    push_cycles = sink.pushes
    if len(push_cycles) != words_per_frame * frames:  # pragma: no cover - guarded by the unit loop
        raise AssertionError(f"sink saw {len(push_cycles)} pushes, expected {words_per_frame * frames}")
    done = [push_cycles[(f + 1) * words_per_frame - 1] + 1 for f in range(frames)]
    return StreamResult(
        outputs=out_vals,
        frame_done=done,
        latency_cycles=done[0],
        interval_cycles=(done[-1] - done[-2]) if frames > 1 else None,
        cycles=t,
        wall_s=wall,
        fifo_depths=depths,
        fifo_peak=[q.peak for q in fifos],
        fifo_blocked=[q.blocked for q in fifos],
        starved={u.name: u.starved for u in units},
        stage_names=[s.name for s in stages],
    )
