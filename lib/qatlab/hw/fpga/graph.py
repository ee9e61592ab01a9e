"""Timing of a dataflow graph with branches: when each op's stream starts and ends, and
how deep the FIFO in front of a join must be so the early branch never blocks.

A residual block forks a stream: the skip branch reaches the join (an add, a mul, a
concat) long before the main branch's first element, because the main branch's
sliding windows must first fill their line buffers. Everything the skip branch
delivers meanwhile waits in the join's FIFO; if that FIFO is too shallow the fork
blocks and the whole pipeline stalls (FINN sizes these FIFOs by simulation,
``InsertAndSetFIFODepths``). This module computes those depths and the graph's
latency in closed form, on a fluid model of the streams of frame 0:

* each op's output is delivered at a constant rate between its first element (cycle
  ``first``) and its last (cycle ``last``): ``D(t) = E·clamp((t - first + 1)/(last -
  first + 1), 0, 1)`` elements by the end of cycle ``t``;
* an op starts once it holds its *lead* of every input: a sliding window
  ``((k_h-1)·W + k_w)·C`` elements (its line buffer), a fully connected layer its
  whole input vector, a global pool everything, an element-wise op one element, a
  broadcast operand (a gate of C values against a C x H x W stream) all of it;
  ``first = start + 1`` and ``last = max(first + II - 1, last of every input + 1)``,
  ``II`` the op's initiation interval (its slowest unit's cycles per frame);
* a join consumes its element-wise inputs in step: the fraction of the frame it has
  consumed by cycle ``t`` is ``min`` over those inputs of ``D_u(t)/E_u`` and of its own
  pace ``(t - start + 1)/II`` (nothing before ``start``); the FIFO on input ``u``
  holds ``D_u(t) - E_u·consumed(t)``, and its depth is the largest such value.

Pass-through ops (flatten, reshape, ...) are transparent. The functions are piecewise
linear, so the largest occupancy is found at the breakpoints (:func:`join_fifo_depths`);
:func:`join_fifo_depths_reference` scans every cycle instead, the check of the fast
one. This is a frame-0 model, an estimate like FINN's own: later frames follow at the
design's initiation interval, which is at least every op's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping, Sequence

from .errors import FpgaError


@dataclass(frozen=True)
class GraphNode:
    """One op of the graph as the timing model sees it."""

    name: str
    inputs: tuple[str, ...]  # producer node names
    in_elems: tuple[int, ...]  # elements per frame read from each input
    out_elems: int
    ii: int  # cycles per frame of the op's slowest unit (0: pass-through)
    lead: tuple[int, ...]  # elements of each input held before the first output
    join: bool = False  # consumes its inputs in step (add, mul, cat)


@dataclass(frozen=True)
class Timing:
    first: int  # cycle of the first output element of frame 0
    last: int  # cycle of the last
    start: int  # cycle in which the op had its lead of every input


@dataclass(frozen=True)
class GraphSchedule:
    timing: dict[str, Timing]
    fifo_depth: dict[str, tuple[int, ...]]  # join name -> elements per input
    latency: int  # cycles from the first input element to the output's last, inclusive


def delivered(t: int, e: int, tm: Timing) -> Fraction:
    """Elements of a stream delivered by the end of cycle ``t``."""
    n = tm.last - tm.first + 1
    return Fraction(e) * min(max(Fraction(t - tm.first + 1, n), Fraction(0)), Fraction(1))


def time_of(x: int, e: int, tm: Timing) -> int:
    """The first cycle by whose end ``x`` elements (1 <= x <= e) are delivered."""
    n = tm.last - tm.first + 1
    return tm.first - 1 + max(1, -(-x * n // e))


def _topo(nodes: Sequence[GraphNode], source: str) -> list[GraphNode]:
    by = {v.name: v for v in nodes}
    if source in by:
        raise FpgaError(f"graph: the source {source!r} is also an op")
    seen: set[str] = {source}
    out: list[GraphNode] = []
    pending = list(nodes)
    while pending:
        ready = [v for v in pending if all(u in seen for u in v.inputs)]
        if not ready:
            missing = sorted({u for v in pending for u in v.inputs if u not in seen and u not in by})
            raise FpgaError(f"graph: {'inputs ' + ', '.join(missing) + ' produced by no op' if missing else 'a cycle'}")
        for v in ready:
            seen.add(v.name)
            out.append(v)
        pending = [v for v in pending if v.name not in seen]
    return out


def _is_broadcast(v: GraphNode, k: int) -> bool:
    return v.join and v.in_elems[k] < max(v.in_elems)


def _consumed(t: int, v: GraphNode, tm: Timing, inputs: Sequence[tuple[int, Timing]]) -> Fraction:
    """Fraction of the frame a join has consumed by the end of cycle ``t``."""
    if t < tm.start:
        return Fraction(0)
    fr = min(Fraction(1), Fraction(t - tm.start + 1, max(v.ii, 1)))
    for k, (e, ut) in enumerate(inputs):
        if not _is_broadcast(v, k):
            fr = min(fr, delivered(t, e, ut) / e)
    return fr


def graph_schedule(nodes: Sequence[GraphNode], source: str, source_cycles: int, output: str) -> GraphSchedule:
    """Frame 0's timing of every op and the FIFO depth each join's inputs need.

    ``source`` names the graph input, which delivers its frame over ``source_cycles``
    cycles from cycle 0; ``output`` the op whose last element ends the frame."""
    order = _topo(nodes, source)
    timing: dict[str, Timing] = {source: Timing(0, max(source_cycles, 1) - 1, 0)}
    elems: dict[str, int] = {}
    for v in order:
        if len(v.in_elems) != len(v.inputs) or len(v.lead) != len(v.inputs):
            raise FpgaError(f"graph: op {v.name!r} needs one element count and one lead per input")
        ins = [timing[u] for u in v.inputs]
        if v.ii == 0:  # pass-through: the input stream, renamed
            timing[v.name] = ins[0]
            continue
        start = max((time_of(max(1, min(ld, e)), e, ut) for ld, e, ut in zip(v.lead, v.in_elems, ins)), default=0)
        first = start + 1
        last = max([first + v.ii - 1] + [ut.last + 1 for ut in ins])
        timing[v.name] = Timing(first, last, start)
        elems[v.name] = v.out_elems
    depths = {v.name: join_fifo_depths(v, timing[v.name], [timing[u] for u in v.inputs]) for v in order if v.join and v.ii}
    if output not in timing:
        raise FpgaError(f"graph: output {output!r} is not an op")
    return GraphSchedule({k: t for k, t in timing.items() if k != source}, depths, timing[output].last + 1)


def _breakpoints(v: GraphNode, tm: Timing, ins: Sequence[Timing]) -> list[int]:
    pts = {tm.start - 1, tm.start, tm.start - 1 + max(v.ii, 1)}
    for ut in ins:
        pts.update((ut.first - 1, ut.last))
    return sorted(p for p in pts if p >= 0)


def join_fifo_depths(v: GraphNode, tm: Timing, ins: Sequence[Timing]) -> tuple[int, ...]:
    """Largest occupancy of each input's FIFO (elements), at the breakpoints."""
    inputs = list(zip(v.in_elems, ins))
    pts = _breakpoints(v, tm, ins)
    out = []
    for k, (e, ut) in enumerate(inputs):
        if _is_broadcast(v, k):
            out.append(0)  # held inside the op (its operand buffer), not in a FIFO
            continue
        best = max((delivered(t, e, ut) - e * _consumed(t, v, tm, inputs) for t in pts), default=Fraction(0))
        out.append(max(0, math.ceil(best)))
    return tuple(out)


def join_fifo_depths_reference(v: GraphNode, tm: Timing, ins: Sequence[Timing]) -> tuple[int, ...]:
    """:func:`join_fifo_depths` by scanning every cycle of the frame."""
    inputs = list(zip(v.in_elems, ins))
    end = max([tm.last] + [ut.last for ut in ins]) + 1
    out = []
    for k, (e, ut) in enumerate(inputs):
        if _is_broadcast(v, k):
            out.append(0)
            continue
        best = max(delivered(t, e, ut) - e * _consumed(t, v, tm, inputs) for t in range(end + 1))
        out.append(max(0, math.ceil(best)))
    return tuple(out)


def producer_of(values: Mapping[str, str], value: str, source: str, source_value: str) -> str:
    """The node producing ``value`` (``source`` for the graph input)."""
    if value == source_value:
        return source
    if value not in values:
        raise FpgaError(f"graph: value {value!r} is produced by no op")
    return values[value]
