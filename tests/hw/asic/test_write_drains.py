"""The ofmap write buffer's drains in closed form against the replays of SCALE-Sim's buffer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.hw.asic import memory as mem
from qatlab.hw.asic.dataflow import ArrayMapping


def figures(r: mem.WriteBufferResult) -> tuple[int, ...]:
    return (r.stall_cycles, r.dram_writes, r.dram_words, r.dram_start, r.dram_stop)


@st.composite
def mappings(draw, most: int = 40):
    df = draw(st.sampled_from(["os", "ws", "is"]))
    m = ArrayMapping(df, draw(st.integers(1, 9)), draw(st.integers(1, 9)), *(draw(st.integers(1, most)) for _ in range(3)))
    return m


@settings(max_examples=300, deadline=None)
@given(mappings(), st.integers(2, 300), st.integers(0, 12))
def test_closed_form_equals_the_word_by_word_replay(m, size, extra_bw):
    bw = mem.OfmapRows(m).max_per_row() + extra_bw  # any bandwidth at least the widest row
    closed = mem.write_buffer_closed(m, size, bw)
    assert figures(closed) == figures(mem.write_buffer_stepwise(m.ofmap_rows.dense(), size, bw))
    event = mem.write_buffer(m.ofmap_rows, size, bw)
    assert figures(closed) == figures(event) and closed.drains == event.drains
    assert closed.stall_cycles == 0


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["os", "ws", "is"]),
    st.sampled_from([4, 16, 32, 128]),
    st.sampled_from([4, 16, 32, 128]),
    st.integers(50, 3000),
    st.integers(1, 300),
    st.integers(1, 300),
    st.integers(100, 20000),
)
def test_closed_form_equals_the_event_replay_on_long_layers(df, r, c, m_, n_, k_, size):
    """Thousands of drains over many folds (CALC mode: one array row of words per cycle)."""
    m = ArrayMapping(df, r, c, m_, n_, k_)
    closed = mem.write_buffer_closed(m, size, c)
    event = mem.write_buffer(m.ofmap_rows, size, c)
    assert figures(closed) == figures(event) and closed.drains == event.drains


@settings(max_examples=200, deadline=None)
@given(mappings(60), st.data())
def test_ofmap_rows_answers_as_the_stored_profile(m, data):
    rows, stored = mem.OfmapRows(m), m.ofmap_rows
    assert (rows.total, rows.num_rows, rows.rows_per_fold) == (stored.total, stored.num_rows, stored.rows_per_fold)
    assert rows.max_per_row() == max(stored.dense())
    for g in data.draw(st.lists(st.integers(0, stored.total - 1), min_size=1, max_size=20)):
        assert rows.row_of(g) == stored.row_of(g)
    with pytest.raises(ValueError, match="outside"):
        rows.row_of(stored.total)


def test_a_huge_layer_is_answered_without_per_row_state():
    # 10^5 x 10^5 outputs with a reduction of 1000 on a 32x32 ws array (64 kB ofmap SRAM):
    # 3.2e11 words, ten million drains; SCALE-Sim's last drain ends at the last cycle plus
    # one line per cycle for the 1025 lines left.
    m = ArrayMapping("ws", 32, 32, 100_000, 100_000, 1000)
    r = mem.ofmap_write_buffer(m, 64 * 1024, 32)
    assert "ofmap_rows" not in m.__dict__  # no per-row profile was built
    assert (r.stall_cycles, r.dram_words) == (0, 32 * 100_000 * 100_000)
    assert r.dram_writes == r.dram_words + 31  # the first drain leaves a 1-word line, later counted full
    assert r.dram_stop == m.compute_rows - 1 + 1024
    assert r.drains == 9_765_626


def test_a_row_wider_than_the_drain_is_refused():
    m = ArrayMapping("ws", 8, 8, 50, 8, 8)  # 8 words per row
    with pytest.raises(ValueError, match="above the drain bandwidth"):
        mem.write_buffer_closed(m, 100, 4)
    assert figures(mem.ofmap_write_buffer(m, 100, 4)) == figures(mem.write_buffer_stepwise(m.ofmap_rows.dense(), 100, 4))


def test_replay_steps_bound_the_event_replay():
    """The step count the guard charges covers the events the replay takes, and is 0 in closed form."""
    from qatlab.hw.limits import LimitError, check_asic_replay

    wide = ArrayMapping("ws", 8, 8, 400, 8, 8)  # 8 words a row, drained at 2 a cycle: stalls
    assert mem.ofmap_replay_steps(wide, 64, 2) >= mem.write_buffer(wide.ofmap_rows, 64, 2).drains
    assert mem.ofmap_replay_steps(wide, 64, 8) == 0  # closed form
    assert mem.ofmap_replay_steps(wide, 1 << 20, 2) == 0  # never drains early
    with pytest.raises(LimitError, match=r"layer 'w'.*over the bound of 10"):
        check_asic_replay("w", mem.ofmap_replay_steps(wide, 64, 2), "the drains", limit=10)
