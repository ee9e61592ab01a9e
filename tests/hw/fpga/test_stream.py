"""The cycle-stepped streaming simulation against the integer reference (bit for bit)
and against the analytic model (throughput, latency, FIFO depths), on random small
networks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.hw.fpga import (
    ChainError,
    DeadlockError,
    IntLayer,
    LayerFolding,
    analyze,
    geometry,
    reference_forward,
    simulate,
)
from qatlab.hw.fpga.folding import resolve_folding
from qatlab.hw.fpga.schedule import build_stages, compute_schedule
from qatlab.hw.workload import Layer

from .nets import networks


def _ref(layers, params, x):
    return np.stack([reference_forward(layers, params, f)[-1] for f in x])


@settings(max_examples=40)
@given(networks())
def test_stepped_equals_reference_and_analytic(net):
    layers, params, folds, x = net
    res = simulate(layers, params, folds, x)
    assert np.array_equal(res.outputs, _ref(layers, params, x))
    # The stepped simulation runs the HLS sliding window's loop: the qatlab cost model's.
    rep = analyze(layers, "U250", folding=folds, params=params, cost_model="qatlab")
    assert res.latency_cycles == rep.totals["latency_cycles"]
    # frames enter as fast as the first FIFO takes them: the steady interval is the slowest
    # unit's count; before it settles, intervals are only ever longer (d_f - f*P never decreases)
    assert res.interval_cycles == rep.totals["ii_cycles"]
    assert all(d >= rep.totals["ii_cycles"] for d in np.diff(res.frame_done))
    # with the analytic depths nothing overflows: the peak occupancy is at most the depth
    assert all(p <= d for p, d in zip(res.fifo_peak, res.fifo_depths))


@settings(max_examples=25)
@given(networks())
def test_throttled_stream_follows_the_schedule_exactly(net):
    layers, params, folds, x = net
    geoms = [geometry(lay) for lay in layers]
    sch = compute_schedule(build_stages(geoms, resolve_folding(geoms, folds)))
    res = simulate(layers, params, folds, x, throttle=True)
    assert not any(res.fifo_blocked)  # the depths are enough at the design's rate
    assert res.fifo_peak == sch.fifo_depth  # ... and each is reached: none is larger than needed
    assert res.latency_cycles == sch.latency
    assert res.frame_done[-1] - res.frame_done[-2] == sch.period
    assert np.array_equal(res.outputs, _ref(layers, params, x))


@settings(max_examples=20)
@given(networks(max_layers=2), st.integers(4, 14), st.sampled_from(["wrap", "saturate"]))
def test_narrow_accumulator_stepped_equals_reference(net, bits, mode):
    layers, params, folds, x = net
    geoms = [geometry(lay) for lay in layers]
    simd = [f.simd for f in resolve_folding(geoms, folds)]
    res = simulate(layers, params, folds, x[:2], acc_bits=bits, acc_mode=mode, fifo_depths=None)
    ref = np.stack([reference_forward(layers, params, f, simd=simd, acc_bits=bits, acc_mode=mode)[-1] for f in x[:2]])
    assert np.array_equal(res.outputs, ref)


def _tiny():
    lay = [Layer("a", 5, 5, 3, 3, 2, 4), Layer("b", 3, 3, 3, 3, 4, 3)]
    rng = np.random.default_rng(1)
    params = [
        IntLayer(rng.integers(-128, 128, size=(4, 18)), None, np.full(4, 1e-3), 0, 0, 255),
        IntLayer(rng.integers(-128, 128, size=(3, 36)), None, None),
    ]
    x = rng.integers(0, 256, size=(3, 50))
    return lay, params, x


def test_shallower_fifo_blocks_and_slows_or_deadlocks():
    lay, params, x = _tiny()
    folds = {"a": LayerFolding(4, 18, 2), "b": LayerFolding(1, 1)}
    full = simulate(lay, params, folds, x, throttle=True)
    k = int(np.argmax(full.fifo_depths))
    shallow = list(full.fifo_depths)
    shallow[k] -= 1
    try:
        res = simulate(lay, params, folds, x, fifo_depths=shallow, throttle=True)
    except DeadlockError:
        return
    assert res.fifo_blocked[k] > 0
    assert np.array_equal(res.outputs, full.outputs)  # backpressure never loses data


def test_deadlock_is_reported():
    lay, params, x = _tiny()
    # the SWU pushes 2-element words, the MVAU pops 18: a 2-deep FIFO can never hold a read
    folds = {"a": LayerFolding(1, 18, 2), "b": LayerFolding(1, 1)}
    with pytest.raises(DeadlockError, match="deadlocked"):
        simulate(lay, params, folds, x, fifo_depths=2)


def test_unchained_network_refused_for_functional_simulation():
    lay = [Layer("c1", 30, 30, 3, 3, 1, 4), Layer("c2", 16, 16, 3, 3, 4, 4)]  # a pool + pad between
    g = [geometry(layer) for layer in lay]
    params = [IntLayer(np.ones((4, 9), dtype=np.int64), None, np.ones(4)), IntLayer(np.ones((4, 36), dtype=np.int64))]
    with pytest.raises(ChainError, match="c1.*c2.*pooling or padding"):
        simulate(lay, params, {"*": LayerFolding()}, np.zeros((1, g[0].in_elems), dtype=np.int64))
    # the analytic model still times it (an implicit proportional stage joins them)
    rep = analyze(lay, "ZCU104", folding={"*": LayerFolding()})
    assert rep.totals["latency_cycles"] > 0


def test_speed_is_recorded():
    lay, params, x = _tiny()
    res = simulate(lay, params, {"a": LayerFolding(2, 6), "b": LayerFolding(3, 4)}, x)
    assert res.cycles > 0 and res.cycles_per_s > 0 and res.wall_s > 0


@settings(max_examples=40)
@given(networks())
def test_the_default_model_steps_finns_rtl_windows(net):
    """FINN's RTL windows (default and parallel style, as the folding resolves them)
    stepped: bit-exact, every window element read before it is emitted, and the latency,
    interval and FIFO depths of the default (FINN) analytic schedule."""
    layers, params, folds, x = net
    res = simulate(layers, params, folds, x, rtl_window=True)
    assert np.array_equal(res.outputs, _ref(layers, params, x))
    rep = analyze(layers, "U250", folding=folds, params=params)
    assert res.latency_cycles == rep.totals["latency_cycles"]
    assert res.interval_cycles == rep.totals["ii_cycles"] == max(r.ii_cycles for r in rep.layers)
    assert all(p <= d for p, d in zip(res.fifo_peak, res.fifo_depths))


def test_a_parallel_window_is_stepped():
    lay = [Layer("c", 6, 6, 3, 3, 2, 4), Layer("fc", 1, 1, 1, 1, 64, 3)]
    rng = np.random.default_rng(0)
    params = [
        IntLayer(rng.integers(-8, 8, size=(4, 18)), multiplier=np.full(4, 0.01), qmin=0, qmax=255),
        IntLayer(rng.integers(-8, 8, size=(3, 64))),
    ]
    folds = {"c": LayerFolding(2, 18), "fc": LayerFolding(1, 8)}  # SIMD 18 > 2 channels: parallel
    x = rng.integers(0, 256, size=(3, 72))
    res = simulate(lay, params, folds, x, rtl_window=True)
    rep = analyze(lay, "U250", folding=folds, params=params)
    assert rep.folding["c"].parallel_window and rep.layers[0].swu_cycles == 6 * 6 + 2
    assert np.array_equal(res.outputs, _ref(lay, params, x)) and res.latency_cycles == rep.totals["latency_cycles"]
