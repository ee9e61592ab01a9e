"""USER mode from miss to miss and drain to drain against SCALE-Sim's buffers replayed row by row, word by word."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.hw.asic import trace
from qatlab.hw.asic.dataflow import ArrayMapping
from qatlab.hw.asic.simulate import scalesim_m
from qatlab.hw.asic.user_replay import _MissScan, user_replay, user_replay_events
from qatlab.hw.workload import Layer


@st.composite
def user_runs(draw):
    f, s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = f + draw(st.integers(0, 9))
    layer = Layer("c", h, h + draw(st.integers(0, 3)), f, f, draw(st.integers(1, 12)), draw(st.integers(1, 30)), s, s)
    m = ArrayMapping(
        draw(st.sampled_from(["os", "ws", "is"])), draw(st.integers(1, 9)), draw(st.integers(1, 9)), scalesim_m(layer), layer.N, layer.K
    )
    a = trace.IfmapAddresses(layer.ifmap_h, layer.ifmap_w, f, f, layer.channels, s, s)
    sizes = tuple(draw(st.integers(100, 3000)) for _ in range(3))
    bws = tuple(draw(st.integers(1, 30)) for _ in range(3))
    return m, a, sizes, bws


@settings(max_examples=70, deadline=None)
@given(user_runs())
def test_events_equal_the_row_by_row_replay(run):
    m, a, sizes, bws = run
    assert user_replay_events(m, a, sizes, bws) == user_replay(m, a, sizes, bws)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=400), st.data(), st.integers(100, 900), st.integers(1, 12))
def test_miss_scan_equals_the_word_by_word_buffer(fetch, data, size_words, bw):
    """Any fetch order and any request order over its words: the same misses, shifts and DRAM words."""
    from qatlab.hw.asic.user_replay import ReadBuffer

    fetch_arr = np.asarray(fetch, dtype=np.int64)
    words = data.draw(st.lists(st.sampled_from(sorted(set(fetch))), min_size=1, max_size=600))
    ref = ReadBuffer(fetch_arr, size_words, bw)
    shifts_ref = []
    for w in words:
        before = ref.dram
        ref.row([w], 0)
        shifts_ref.append((ref.dram - before) // (ref.fetch_lines * bw))
    scan = _MissScan(fetch_arr, size_words, bw)
    at, shifts = scan.misses(np.asarray(words, dtype=np.int64))
    want = [(i, k) for i, k in enumerate(shifts_ref) if k]
    assert list(zip(at.tolist(), shifts.tolist())) == want
    assert scan.dram == ref.dram
