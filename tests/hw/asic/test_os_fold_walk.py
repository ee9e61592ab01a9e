"""The os fold walk's arithmetic (per-tap emptying, runs of folds) against SCALE-Sim's read window replayed."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qatlab.hw.asic import trace
from qatlab.hw.asic.dataflow import ArrayMapping
from qatlab.hw.asic.memory import calc_window
from qatlab.hw.asic.simulate import scalesim_m
from qatlab.hw.workload import Layer


def addresses(layer: Layer) -> trace.IfmapAddresses:
    return trace.IfmapAddresses(
        layer.ifmap_h, layer.ifmap_w, layer.filter_h, layer.filter_w, layer.channels, layer.stride_h, layer.stride_w
    )


@st.composite
def convs(draw, max_channels: int = 48):
    """A convolution (any filter and stride: overlapping, touching or gapped windows) on an os array."""
    fh, fw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    layer = Layer(
        "c",
        fh + draw(st.integers(0, 14)),
        fw + draw(st.integers(0, 14)),
        fh,
        fw,
        draw(st.integers(1, max_channels)),
        draw(st.integers(1, 40)),
        sh,
        sw,
        batch=draw(st.integers(1, 2)),
    )
    m = ArrayMapping("os", draw(st.sampled_from([1, 2, 3, 5, 8, 13, 32, 64])), draw(st.integers(1, 9)), scalesim_m(layer), layer.N, layer.K)
    return layer, m


@settings(max_examples=100, deadline=None)
@given(convs(), st.integers(100, 4000))
def test_fold_walk_equals_the_replay(conv, size_words):
    layer, m = conv
    a = addresses(layer)
    assert trace.os_ifmap_reads_by_folds(m, a, size_words) == trace.calc_ifmap_reads_replay(m, a, size_words)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 2), st.integers(40, 300), st.sampled_from([4, 8, 16]), st.integers(100, 400))
def test_many_emptyings_inside_one_fold(f, s, channels, rows, size_words):
    """A fold holds many windows' worth of words: epochs begin and end inside it, again and again."""
    layer = Layer("c", f + 4, f + 5, f, f, channels, 3, s, s)
    m = ArrayMapping("os", rows, 2, scalesim_m(layer), layer.N, layer.K)
    a = addresses(layer)
    assume(rows * f * f * channels > 3 * calc_window(size_words))  # only draws that do hold many windows
    assert trace.os_ifmap_reads_by_folds(m, a, size_words) == trace.calc_ifmap_reads_replay(m, a, size_words)


def fold_requests(m: ArrayMapping, a: trace.IfmapAddresses, fr: int) -> set[tuple[int, int, int]]:
    """(input pixel, channel, request time) of every request of row fold ``fr``, in demand order."""
    r = m.row_used()[fr]
    t, i = trace._diag(m.T, r)
    tap, ch = np.divmod(t, a.c)
    win = trace._OsWalk(m, a, 1).window(fr)
    pix = win[i, tap]
    slot = (t + i) * r + i  # the request's time: its (diagonal, row) slot
    assert np.all(np.diff(slot) > 0)  # demand order is diagonal by diagonal, rows in order
    return {(int(p), int(c), int(s)) for p, c, s in zip(pix, ch, slot) if p >= 0}


@settings(max_examples=60, deadline=None)
@given(convs(max_channels=12), st.data())
def test_fold_taps_list_the_folds_requests(conv, data):
    """Each (row, tap) pair asks for its pixel's channels at ``base + ch * r``: exactly the fold's requests."""
    layer, m = conv
    a = addresses(layer)
    fr = data.draw(st.integers(0, m.row_fold - 1))
    win = trace._OsWalk(m, a, 1).window(fr)
    if not (win >= 0).any():
        return
    ft = trace._FoldTaps(win, a.c)
    got = {(int(p), ch, int(b) + ch * ft.r) for p, b in zip(ft.pix, ft.base) for ch in range(a.c)}
    assert got == fold_requests(m, a, fr)
    # Within a pixel the pairs come in request order; heads and tails bracket each pixel.
    assert np.all(np.diff(ft.pix) >= 0)
    same = ft.pix[1:] == ft.pix[:-1]
    assert np.all(np.diff(ft.base)[same] > 0)
    assert np.array_equal(ft.pix[ft.head], ft.pix[ft.tail])
    assert len(np.unique(ft.pix)) == len(ft.head)


@settings(max_examples=60, deadline=None)
@given(convs(max_channels=10), st.data())
def test_cut_finds_the_needed_miss(conv, data):
    """The request time after the n-th first request of the fold's words, against the requests sorted by time."""
    layer, m = conv
    a = addresses(layer)
    fr = data.draw(st.integers(0, m.row_fold - 1))
    win = trace._OsWalk(m, a, 1).window(fr)
    if not (win >= 0).any():
        return
    ft = trace._FoldTaps(win, a.c)
    unseen = np.asarray(data.draw(st.lists(st.integers(0, a.c), min_size=len(ft.head), max_size=len(ft.head))), dtype=np.int64)
    # The epoch under way misses channel ch of pixel p at the word's first request if ch < unseen[p].
    limit = dict(zip(ft.pixels.tolist(), unseen.tolist()))
    first_at: dict[tuple[int, int], int] = {}
    for p, ch, s in sorted(fold_requests(m, a, fr), key=lambda x: x[2]):
        first_at.setdefault((p, ch), s)
    misses = sorted(s for (p, ch), s in first_at.items() if ch < limit[p])
    if not misses:
        return
    need = data.draw(st.integers(1, len(misses)))
    t = ft.cut(ft.head_off, ft.head_off + unseen, ft.head_row, need)
    assert t == misses[need - 1] + 1
    # and the channels each pair had asked for by then
    done = ft.asked_before(t)
    for k in range(len(ft.pix)):
        assert done[k] == sum(1 for ch in range(a.c) if ft.base[k] + ch * ft.r < t)


@settings(max_examples=80, deadline=None)
@given(convs(max_channels=2))
def test_first_folds_and_met_again_equal_the_windows(conv):
    """Each pixel's first covering fold, and where a later fold first meets it again, from the folds' windows."""
    layer, m = conv
    a = addresses(layer)
    walk = trace._OsWalk(m, a, 1)
    folds_of: dict[int, list[int]] = {}
    for fr in range(m.row_fold):
        for p in np.unique(walk.window(fr)):
            if p >= 0:
                folds_of.setdefault(int(p), []).append(fr)
    expect = np.full(walk.pixels, m.row_fold)
    for p, fs in folds_of.items():
        expect[p] = fs[0]
    assert np.array_equal(walk.first_fold, expect)
    assert list(walk.fresh) == [int((expect < f).sum()) for f in range(m.row_fold + 1)]
    for f in range(m.row_fold + 1):
        pix, at, latest = walk.met_again(f)
        want = {p: next(g for g in fs if g >= f) for p, fs in folds_of.items() if fs[0] < f <= fs[-1]}
        assert dict(zip(pix.tolist(), at.tolist())) == want
        assert latest == max(want.values(), default=-1)


def test_resnet18_first_layer_on_small_and_large_buffers():
    """ResNet-18's 7x7 stride-2 stem (three channels, 379 row folds): the arithmetic against the replay."""
    layer = Layer("conv1", 224, 224, 7, 7, 3, 64, 2, 2)
    m = ArrayMapping("os", 32, 32, scalesim_m(layer), layer.N, layer.K)
    a = addresses(layer)
    for kb in (8, 64):
        assert trace.os_ifmap_reads_by_folds(m, a, kb * 1024) == trace.calc_ifmap_reads_replay(m, a, kb * 1024)
