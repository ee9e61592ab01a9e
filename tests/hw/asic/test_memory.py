"""The event-jumping write-buffer replay against the word-by-word reference, and the read models."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qatlab.hw.asic import memory as mem
from qatlab.hw.asic.dataflow import ArrayMapping


@given(
    st.sampled_from(["os", "ws", "is"]),
    st.integers(1, 8),
    st.integers(1, 8),
    st.integers(1, 30),
    st.integers(1, 30),
    st.integers(1, 30),
    st.integers(2, 160),
    st.integers(1, 12),
)
def test_write_buffer_equals_word_by_word_replay(df, r, c, m_, n_, k_, size, bw):
    m = ArrayMapping(df, r, c, m_, n_, k_)
    fast = mem.write_buffer(m.ofmap_rows, size, bw)
    slow = mem.write_buffer_stepwise(list(m.ofmap_rows.dense()), size, bw)
    assert (fast.stall_cycles, fast.dram_writes, fast.dram_words, fast.dram_start, fast.dram_stop) == (
        slow.stall_cycles,
        slow.dram_writes,
        slow.dram_words,
        slow.dram_start,
        slow.dram_stop,
    )
    assert fast.dram_words == m.ofmap_rows.total
    short = mem.ofmap_write_buffer(m, size, bw)  # skips the replay when nothing drains early
    assert (short.stall_cycles, short.dram_writes, short.dram_start, short.dram_stop) == (
        slow.stall_cycles,
        slow.dram_writes,
        slow.dram_start,
        slow.dram_stop,
    )
    assert fast.dram_writes >= fast.dram_words  # early-closed lines are only ever over-counted


def test_write_buffer_stalls_when_drains_are_slower_than_writes():
    m = ArrayMapping("ws", 8, 8, 200, 8, 8)  # 8 outputs per cycle
    roomy = mem.write_buffer(m.ofmap_rows, 4096, 8)
    assert roomy.stall_cycles == 0
    tight = mem.write_buffer(m.ofmap_rows, 64, 1)  # drained at 1 word per cycle
    assert tight.stall_cycles > 1000
    ref = mem.write_buffer_stepwise(list(m.ofmap_rows.dense()), 64, 1)
    assert tight.stall_cycles == ref.stall_cycles


def test_partial_lines_inside_a_drain_are_counted_full():
    # 7 words per cycle, lines of 4, a 20-word buffer: drains close part-filled lines early,
    # and a later drain that covers such a line in its middle counts it as 4 words.
    r = mem.write_buffer_stepwise([7] * 10, 20, 4)
    assert (r.dram_words, r.dram_writes) == (70, 74)


def test_calc_dram_start_cycles():
    # SCALE-Sim 3.0.0 on test.csv with scale.cfg (64 kB, 655-word sets) reports -983 for
    # the ifmap (9408 words fit: 15 whole sets at 10 words/cycle, ending at cycle -1) and
    # -3275 for the filter (too big: 50 sets back-dated before the first request, cycle 0).
    size = 64 * 1024
    assert mem.calc_dram_start(9408, 0, size) == -983
    assert mem.calc_dram_start(663552, 0, size) == -3275
    assert mem.calc_dram_start(663552, 32, size) == 32 - 3275


def test_calc_dram_reads_exact_regimes():
    size = 1024
    assert mem.calc_dram_reads(400, 4000, 10, 0, 1, size) == (400, True)  # below the window
    assert mem.calc_dram_reads(900, 900, 1, 0, 1, size) == (900, True)  # every word once
    assert mem.calc_dram_reads(900, 2700, 3, 0, 1, size) == (2700, False)  # estimate: 3 sweeps


def test_user_mode_fit_rule():
    size = 1024  # 11 words per line, the active half holds 47 lines
    assert mem.user_lines(size, 500) == (11, 46, 47)
    assert mem.user_fits(size, 500) and not mem.user_fits(size, 600)
    assert mem.user_first_fill(size, 51200, 10) == 520
    assert mem.user_first_fill(size, 300, 10) == 300


@st.composite
def small_runs(draw):
    from qatlab.hw.workload import Layer

    mode = draw(st.sampled_from(["CALC", "USER"]))
    df = draw(st.sampled_from(["os", "ws", "is"]))
    r, c = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if draw(st.booleans()):
        layer = Layer.gemm("g", draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    else:
        f, s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        h = f + draw(st.integers(0, 8))
        layer = Layer("c", h, h, f, f, draw(st.integers(1, 6)), draw(st.integers(1, 12)), s, s)
    from qatlab.hw.asic import ArrayConfig

    kb = draw(st.integers(1, 2))
    cfg = ArrayConfig(
        rows=r,
        cols=c,
        dataflow=df,
        ifmap_sram_kb=kb,
        filter_sram_kb=kb,
        ofmap_sram_kb=1,
        bandwidth_mode=mode,
        bandwidth=(draw(st.integers(1, 12)),),
        ifmap_bank_bandwidth=draw(st.integers(1, 12)),
        filter_bank_bandwidth=draw(st.integers(1, 12)),
    )
    return layer, cfg


@given(small_runs())
def test_default_equals_the_replay(run):
    """The default (closed forms, replay only where none exists) gives the replay's figures."""
    from qatlab.hw.asic import simulate_layer

    layer, cfg = run
    fast = simulate_layer(layer, cfg)
    slow = simulate_layer(layer, cfg.replace(dram_model="exact"))
    assert fast.scalesim_exact and slow.scalesim_exact
    named = [
        "total_cycles",
        "total_cycles_incl_prefetch",
        "stall_cycles",
        "overall_util_pct",
        "dram_ifmap_reads",
        "dram_filter_reads",
        "dram_ofmap_writes",
    ]
    assert [getattr(fast, f) for f in named] == [getattr(slow, f) for f in named]
    # our own figures do not depend on the replay
    assert (fast.cycles, fast.energy_pj) == (slow.cycles, slow.energy_pj)


def test_a_user_mode_replay_that_would_run_for_minutes_is_refused():
    import pytest

    from qatlab.hw.asic import ArrayConfig, simulate_layer
    from qatlab.hw.limits import MAX_ASIC_REPLAY_STEPS, LimitError
    from qatlab.hw.workload import Layer

    cfg = ArrayConfig(rows=32, cols=32, dataflow="ws", ifmap_sram_kb=4, filter_sram_kb=4, bandwidth_mode="USER", bandwidth=(10,))
    layer = Layer("c", 200, 200, 3, 3, 64, 64, 1, 1)  # 4 kB SRAMs overflow: SCALE-Sim's buffers replayed
    with pytest.raises(LimitError, match=rf"layer 'c': the USER-mode replay .* takes \d+ steps, over the bound of {MAX_ASIC_REPLAY_STEPS}"):
        simulate_layer(layer, cfg)
    small = Layer("c", 20, 20, 3, 3, 64, 64, 1, 1)  # the same overflow, a hundredth of the steps: replayed
    assert simulate_layer(small, cfg).scalesim_exact


def test_an_overlapping_window_replay_too_large_is_refused_before_numpy_is_asked():
    import pytest

    from qatlab.hw.asic import ArrayConfig, simulate_layer
    from qatlab.hw.limits import LimitError
    from qatlab.hw.workload import Layer

    cfg = ArrayConfig(rows=32, cols=32, dataflow="os")  # CALC, 64 kB SRAMs
    huge = Layer("c3", 3000, 3000, 3, 3, 256, 256, 1, 1)  # 2e10 requests a pass: no closed form, no room
    with pytest.raises(LimitError, match=r"layer 'c3': the replay of its ifmap read window \(20708361216 requests a pass\)"):
        simulate_layer(huge, cfg)
    # the same size without overlapping windows has a closed form and runs
    assert simulate_layer(Layer("c2", 3000, 3000, 2, 2, 256, 256, 2, 2), cfg).scalesim_exact
