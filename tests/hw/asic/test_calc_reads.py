"""The CALC-mode block-stream closed form against SCALE-Sim's read window replayed word by word."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.hw.asic import calc_reads as cr
from qatlab.hw.asic import trace
from qatlab.hw.asic.dataflow import ArrayMapping
from qatlab.hw.asic.memory import calc_window
from qatlab.hw.asic.simulate import ifmap_unique_words
from qatlab.hw.workload import Layer


def replay_blocks(runs: list[tuple[int, int, int]], size_words: int) -> int:
    """Build the word stream of ``runs`` (fresh blocks, each requested r times) and replay it."""
    parts, base = [], 0
    rng = np.random.default_rng(0)
    for d, r, count in runs:
        for _ in range(count):
            order = base + rng.permutation(d)  # any fixed order: the closed form must not care
            parts.extend([order] * r)
            base += d
    return trace.window_misses_stepwise(np.concatenate(parts).tolist(), size_words)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 700), st.integers(1, 4), st.integers(1, 5)), min_size=1, max_size=4),
    st.integers(100, 1500),
)
def test_blocks_misses_equals_the_window_replay(runs, size_words):
    assert cr.blocks_misses(runs, calc_window(size_words)) == replay_blocks(runs, size_words)


def test_blocks_misses_periodic_shortcut_on_a_long_run():
    # Thousands of blocks: the shortcut must add whole periods, not visit each block.
    runs = [(37, 3, 5000), (11, 2, 7)]
    assert cr.blocks_misses(runs, calc_window(1000)) == replay_blocks(runs, 1000)


def test_block_misses_regimes():
    w = 500
    assert cr.block_misses(100, 5, 0, w) == (100, 100)  # fits the epoch: later passes hit
    assert cr.block_misses(300, 5, 300, w) == (300 + 200, 300)  # suffix of 100 resident: 200 refetched
    assert cr.block_misses(300, 1, 300, w) == (300, 100)
    assert cr.block_misses(600, 3, 0, w) == (1800, 300)  # larger than the epoch: every pass misses
    with pytest.raises(ValueError):
        cr.block_misses(10, 1, 500, w)


@st.composite
def block_layers(draw):
    df = draw(st.sampled_from(["os", "ws", "is"]))
    r, c = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    if draw(st.booleans()):
        layer = Layer.gemm("g", draw(st.integers(1, 60)), draw(st.integers(1, 60)), draw(st.integers(1, 60)))
    else:  # windows that share no input word: filter <= stride
        s = draw(st.integers(1, 3))
        f = draw(st.integers(1, s))
        h = f + draw(st.integers(0, 12))
        layer = Layer("c", h, h + draw(st.integers(0, 3)), f, f, draw(st.integers(1, 8)), draw(st.integers(1, 20)), s, s)
    return df, r, c, layer, draw(st.integers(100, 2500))


def addresses(layer: Layer) -> trace.IfmapAddresses:
    if layer.kind == "gemm":
        return trace.IfmapAddresses(layer.M, layer.K, 1, layer.K, 1, 1, 1, gemm_k=layer.K)
    return trace.IfmapAddresses(
        layer.ifmap_h, layer.ifmap_w, layer.filter_h, layer.filter_w, layer.channels, layer.stride_h, layer.stride_w
    )


@settings(max_examples=120, deadline=None)
@given(block_layers())
def test_closed_form_equals_the_replay_on_random_layers(run):
    from qatlab.hw.asic.simulate import scalesim_m

    df, r, c, layer, size = run
    assert cr.ifmap_is_block_stream(layer)
    m = ArrayMapping(df, r, c, scalesim_m(layer), layer.N, layer.K)
    u = ifmap_unique_words(layer, 1, scalesim=True)
    assert cr.calc_ifmap_reads(m, u, size) == trace.calc_ifmap_reads_replay(m, addresses(layer), size)
    assert cr.calc_filter_reads(m, size) == trace.calc_filter_reads_replay(m, size)


def test_overlapping_windows_are_not_block_streams():
    assert not cr.ifmap_is_block_stream(Layer("c", 8, 8, 3, 3, 4, 4, 1, 1))
    assert not cr.ifmap_is_block_stream(Layer("c", 8, 8, 3, 1, 4, 4, 2, 2))
    assert cr.ifmap_is_block_stream(Layer("c", 8, 8, 2, 2, 4, 4, 2, 2))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 400), min_size=1, max_size=1500),
    st.integers(1, 4),
    st.integers(100, 900),
)
def test_epoch_walk_equals_the_stepwise_window(one_pass, passes, size_words):
    """The vectorised epoch walk over a repeated pass against the request-by-request window."""
    p = np.asarray(one_pass, dtype=np.int64)
    fast = trace.epoch_misses(trace.previous_request(p), size_words, passes)
    assert fast == trace.window_misses_stepwise(one_pass * passes, size_words)
    assert fast == trace.epoch_misses(trace.previous_request(np.tile(p, passes)), size_words)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["os", "ws", "is"]),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(2, 4),
    st.integers(1, 2),
    st.integers(0, 7),
    st.integers(1, 5),
    st.integers(1, 12),
    st.integers(100, 800),
)
def test_ifmap_replay_of_one_pass_equals_the_whole_stream(df, r, c, f, s, extra, ch, nf, size_words):
    """Overlapping windows (no closed form): the replay of one pass repeated equals the full stream's."""
    from qatlab.hw.asic.simulate import scalesim_m

    layer = Layer("c", f + extra, f + extra + 1, f, f, ch, nf, s, s)
    m = ArrayMapping(df, r, c, scalesim_m(layer), layer.N, layer.K)
    full = trace.ifmap_stream(m, addresses(layer)).tolist()
    assert trace.calc_ifmap_reads_replay(m, addresses(layer), size_words) == trace.window_misses_stepwise(full, size_words)


def test_held_out_gemm_equals_scalesim():
    """SCALE-Sim 3.0.0's own figure for a GEMM whose filter overflows scale.cfg's 64 kB SRAM."""
    from qatlab.hw.asic import ArrayConfig, simulate_layer

    cfg = ArrayConfig(rows=32, cols=32, dataflow="os", ifmap_sram_kb=64, filter_sram_kb=64, ofmap_sram_kb=64)
    r = simulate_layer(Layer.gemm("g", 64, 256, 784), cfg)
    assert (r.dram_filter_reads, r.scalesim_exact) == (254_338, True)


@st.composite
def big_array_runs(draw):
    from qatlab.hw.asic import ArrayConfig

    r = draw(st.sampled_from([8, 16, 32, 64, 128, 256]))
    c = draw(st.sampled_from([8, 16, 32, 64, 128, 256]))
    if draw(st.booleans()):
        layer = Layer.gemm("g", draw(st.integers(1, 300)), draw(st.integers(1, 300)), draw(st.integers(1, 300)))
    else:
        f, s = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        h = f + draw(st.integers(0, 14))
        layer = Layer("c", h, h, f, f, draw(st.integers(1, 24)), draw(st.integers(1, 70)), s, s)
    kb = draw(st.integers(1, 4))
    cfg = ArrayConfig(
        rows=r,
        cols=c,
        dataflow=draw(st.sampled_from(["os", "ws", "is"])),
        ifmap_sram_kb=kb,
        filter_sram_kb=kb,
        ofmap_sram_kb=max(64, r * c // 1024 + 1),  # holds any output tile
        bandwidth_mode=draw(st.sampled_from(["CALC", "USER"])),
        bandwidth=(draw(st.integers(1, 12)),),
        ifmap_bank_bandwidth=draw(st.sampled_from([10, 20])),
        filter_bank_bandwidth=draw(st.sampled_from([10, 20])),
    )
    return layer, cfg


@settings(max_examples=25, deadline=None)
@given(big_array_runs())
def test_default_equals_the_replay_on_large_arrays(run):
    """Arrays of 8 to 256 rows and columns, SRAMs of 1-4 kB (overflowing), both modes."""
    from qatlab.hw.asic import ConfigError, simulate_layer

    layer, cfg = run
    try:
        fast = simulate_layer(layer, cfg)
    except ConfigError:  # the SRAM cannot hold one array edge of this fold
        return
    slow = simulate_layer(layer, cfg.replace(dram_model="exact"))
    fields = ["total_cycles", "total_cycles_incl_prefetch", "stall_cycles", "dram_ifmap_reads", "dram_filter_reads", "dram_ofmap_writes"]
    assert fast.scalesim_exact
    assert [getattr(fast, f) for f in fields] == [getattr(slow, f) for f in fields]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(1, 8),
    st.tuples(st.integers(1, 5), st.integers(1, 5)),
    st.tuples(st.integers(1, 4), st.integers(1, 4)),
    st.integers(0, 12),
    st.integers(0, 12),
    st.integers(1, 9),
    st.integers(1, 20),
    st.integers(1, 2),
    st.integers(100, 2500),
)
def test_os_fold_walk_equals_the_replay(r, c, f, s, dh, dw, ch, nf, batch, size_words):
    """Overlapping (and non-overlapping) windows, batches, SCALE-Sim's extra windows: the fold walk is the replay."""
    from qatlab.hw.asic.simulate import scalesim_m

    (fh, fw), (sh, sw) = f, s
    layer = Layer("c", fh + dh, fw + dw, fh, fw, ch, nf, sh, sw, batch=batch)
    m = ArrayMapping("os", r, c, scalesim_m(layer), layer.N, layer.K)
    a = addresses(layer)
    assert trace.os_ifmap_reads_by_folds(m, a, size_words) == trace.calc_ifmap_reads_replay(m, a, size_words)


def test_os_fold_walk_equals_the_scalesim_reports_on_resnet18():
    """SCALE-Sim 3.0.0's own DRAM ifmap counts for ResNet-18's overlapping-window layers (scale.cfg)."""
    from pathlib import Path

    from qatlab.hw.asic.scalesim_reports import read_scalesim_reports
    from qatlab.hw.asic.simulate import scalesim_m
    from qatlab.hw.workload import read_topology

    data = Path(__file__).parent / "data"
    reports = read_scalesim_reports(data / "scalesim_reports", "Resnet18__scale")
    layers = read_topology(data / "topologies" / "Resnet18.csv")
    seen = set()
    for layer, ref in zip(layers, reports):
        shape = (layer.ifmap_h, layer.filter_h, layer.channels, layer.N, layer.stride_h)
        if cr.ifmap_is_block_stream(layer) or shape in seen:  # 8 distinct overlapping shapes
            continue
        seen.add(shape)
        m = ArrayMapping("os", 32, 32, scalesim_m(layer), layer.N, layer.K)
        assert trace.os_ifmap_reads_by_folds(m, addresses(layer), 64 * 1024) == ref["dram_ifmap_reads"], layer.name
    assert len(seen) == 8
