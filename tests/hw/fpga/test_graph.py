"""Graph timing: branches side by side, the FIFO a skip branch needs at its join."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.hw.fpga import FpgaError, analyze_intmodel
from qatlab.hw.fpga.graph import GraphNode, Timing, graph_schedule, join_fifo_depths, join_fifo_depths_reference
from qatlab.intmodel.model import IntModel

from ..int_nets import U8, _requant, conv, every_kind, op


def _chain_and_skip(lead: int) -> list[GraphNode]:
    return [
        GraphNode("main", ("x",), (100,), 100, 100, (lead,)),
        GraphNode("add", ("main", "x"), (100, 100), 100, 100, (1, 1), join=True),
    ]


def test_skip_fifo_holds_what_arrives_while_the_window_fills():
    # x streams 100 elements over cycles 0..99; the main branch starts after 50 of them
    sch = graph_schedule(_chain_and_skip(50), "x", 100, "add")
    assert sch.timing["main"] == Timing(50, 149, 49)
    # while the main branch fills, the skip branch delivers 50 elements that must wait
    assert sch.fifo_depth["add"] == (0, 50)
    assert sch.latency == sch.timing["add"].last + 1 == 151
    assert graph_schedule(_chain_and_skip(1), "x", 100, "add").fifo_depth["add"] == (0, 1)


def test_a_global_reduction_on_the_main_branch_needs_the_whole_frame_buffered():
    nodes = [
        GraphNode("se", ("x",), (64,), 8, 64, (64,)),  # a mean: needs every element
        GraphNode("gate", ("se", "x"), (8, 64), 64, 64, (8, 1), join=True),  # broadcast operand se
    ]
    sch = graph_schedule(nodes, "x", 64, "gate")
    assert sch.fifo_depth["gate"] == (0, 64)


@st.composite
def joins(draw):
    k = draw(st.integers(2, 3))
    elems = [draw(st.sampled_from([16, 36, 64, 100])) for _ in range(k)]
    if draw(st.booleans()):
        elems[0] = 4  # a broadcast operand
    ins = []
    for _ in range(k):
        first = draw(st.integers(1, 60))
        ins.append(Timing(first, first + draw(st.integers(0, 150)), first - 1))
    ii = draw(st.integers(1, 160))
    start = max(t.first for t in ins) + draw(st.integers(0, 20))
    node = GraphNode("j", tuple(f"u{i}" for i in range(k)), tuple(elems), max(elems), ii, (1,) * k, join=True)
    tm = Timing(start + 1, max([start + ii] + [t.last + 1 for t in ins]), start)
    return node, tm, ins


@settings(max_examples=150)
@given(joins())
def test_breakpoints_equal_scanning_every_cycle(case):
    node, tm, ins = case
    assert join_fifo_depths(node, tm, ins) == join_fifo_depths_reference(node, tm, ins)


def _residual() -> IntModel:
    ch, hw = 8, 10
    two = {**{f"{k}_a": v for k, v in _requant().items()}, **{f"{k}_b": v for k, v in _requant().items()}}
    ops = [
        op("quantize", "q", ["x"], U8, (ch, hw, hw), in_shape=(ch, hw, hw)),
        conv("a", "q", (ch, hw, hw), ch, 3, pad=1, relu=True, seed=1),
        conv("b", "a", (ch, hw, hw), ch, 3, pad=1, relu=True, seed=2),
        op("add", "res", ["b", "q"], U8, (ch, hw, hw), two, relu=True),
    ]
    return IntModel(ops, "x", "res", (ch, hw, hw), "float", {})


def test_residual_block_is_timed_as_a_graph():
    rep = analyze_intmodel(_residual(), "ZCU104")
    t = rep.totals
    res = next(r for r in rep.layers if r.layer == "res")
    skip, main = t["join_fifo_depths"]["res"][1], t["join_fifo_depths"]["res"][0]
    # the skip branch waits for two 3x3 windows' fills (two padded rows and 3 pixels each)
    assert skip >= 2 * (2 * 12 + 3) * 8 - 8 and main <= 8
    assert res.in_fifo_depth == max(skip, main) and res.fifo_lut + res.fifo_bram18 > 0
    assert t["latency_cycles"] < t["latency_cycles_sum"]  # the branches overlap, FINN's sum does not
    assert t["fifo_lut"] == sum(r.fifo_lut for r in rep.layers)


def test_every_kind_joins_get_fifos():
    rep = analyze_intmodel(every_kind(), "ZCU104")
    j = rep.totals["join_fifo_depths"]
    assert set(j) == {"gate", "res", "cat"}
    assert j["gate"][0] == 0  # the broadcast gate is held inside the mul, not in a FIFO
    assert j["res"][1] == 8 * 3 * 3  # the SE mean needs aap's whole frame: the skip holds it all


def test_graph_errors_name_the_problem():
    with pytest.raises(FpgaError, match="produced by no op"):
        graph_schedule([GraphNode("a", ("nope",), (4,), 4, 4, (1,))], "x", 4, "a")
    with pytest.raises(FpgaError, match="a cycle"):
        graph_schedule([GraphNode("a", ("b",), (4,), 4, 4, (1,)), GraphNode("b", ("a",), (4,), 4, 4, (1,))], "x", 4, "a")
    with pytest.raises(FpgaError, match="one element count"):
        graph_schedule([GraphNode("a", ("x",), (4, 4), 4, 4, (1,))], "x", 4, "a")
