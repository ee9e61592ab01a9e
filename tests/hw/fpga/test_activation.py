"""Thresholds (the hardware) equal the float requantization (the reference) for every accumulator."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from qatlab.hw.fpga import apply_thresholds, requantize, thresholds
from qatlab.quant.requant import requantize as quant_requantize


def test_handworked_half_even():
    # y = clamp(rint(0.1*a), 0, 3): rint(0.5) = 0 and rint(2.5) = 2 (half to even), rint(1.5) = 2
    t = thresholds(np.array([0.1]), None, 0, 0, 3)
    assert t.tolist() == [[6, 15, 26]]
    a = np.arange(-5, 40)
    assert np.array_equal(apply_thresholds(a[:, None], t, 0)[:, 0], requantize(a[:, None], np.array([0.1]), None, 0, 0, 3)[:, 0])


def test_zero_multiplier_and_bias():
    t = thresholds(np.array([0.0, 0.5]), np.array([0, 3]), 2, 0, 3)
    # M = 0: code is z = 2 always -> levels 1, 2 always reached, level 3 never
    assert apply_thresholds(np.array([[-(10**9), 0]]), t, 0)[0, 0] == 2
    assert apply_thresholds(np.array([[10**9, 0]]), t, 0)[0, 0] == 2


@given(
    st.lists(st.floats(0, 4, allow_nan=False), min_size=1, max_size=4),
    st.integers(-200, 200),
    st.integers(-8, 8),
    st.sampled_from([(0, 3), (0, 15), (-8, 7), (0, 255), (-128, 127)]),
    st.integers(0, 2**32 - 1),
)
def test_thresholds_equal_requantization(mults, bias, zp, rng_q, seed):
    rng = np.random.default_rng(seed)
    qmin, qmax = rng_q
    m = np.array(mults) * 10.0 ** rng.integers(-4, 1)
    b = np.full(len(m), bias)
    acc = np.concatenate([rng.integers(-(10**5), 10**5, size=(300, len(m))), rng.integers(-300, 300, size=(300, len(m)))])
    t = thresholds(m, b, zp, qmin, qmax)
    assert np.array_equal(apply_thresholds(acc, t, qmin), requantize(acc, m, b, zp, qmin, qmax))
    # every threshold is exactly where the code steps up
    for n in range(len(m)):
        for k, tv in enumerate(t[n]):
            if abs(tv) < 10**12:
                lvl = qmin + k + 1
                assert requantize(np.array([[tv]]), m[n : n + 1], b[n : n + 1], zp, qmin, qmax)[0, 0] >= lvl
                assert requantize(np.array([[tv - 1]]), m[n : n + 1], b[n : n + 1], zp, qmin, qmax)[0, 0] < lvl


@given(st.integers(0, 2**32 - 1))
def test_same_as_the_quant_package(seed):
    rng = np.random.default_rng(seed)
    acc = rng.integers(-(2**20), 2**20, size=(64, 5))
    m = rng.uniform(1e-5, 1e-2, size=5)
    ours = requantize(acc, m, None, 3, -128, 127)
    theirs = quant_requantize(torch.from_numpy(acc), torch.from_numpy(m), 3, -128, 127, "float").numpy()
    assert np.array_equal(ours, theirs)
