"""Accumulator widths: hand-worked bounds, the bound really bounds, narrow accumulators."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qatlab.hw.fpga import AccumulatorOverflowError, accumulate, accumulator_bits, bits_for_range
from qatlab.hw.fpga.accumulator import check_fits, int_range, narrow, weight_range, worst_case_range


def test_handworked_bounds():
    # weights (MH=2, MW=3), 4-bit unsigned inputs 0..15
    w = np.array([[1, -2, 3], [-4, 0, 0]])
    lo, hi = weight_range(w, 4, False)
    # ch0: max = (1+3)*15 + (-2)*0 = 60, min = 4*0 + (-2)*15 = -30; ch1: max 0, min -4*15 = -60
    assert lo.tolist() == [-30, -60] and hi.tolist() == [60, 0]
    acc = accumulator_bits(3, 4, 4, weights=w)
    # tight [-60, 60]: 2^(b-1) >= max(60, 61) -> b = 7
    assert acc.tight == 7
    # worst: products in [-8*15, 7*15] = [-120, 105], times 3 -> [-360, 315]: 2^(b-1) >= 360 -> b = 10
    assert worst_case_range(3, 4, 4) == (-360, 315) and acc.worst == 10
    # FINN's symmetric bound would be ±max(Σ|w|)*15 = ±90 -> 8 bits; ours is never wider
    assert acc.used == 7 and not acc.overflow_possible
    assert accumulator_bits(3, 4, 4, weights=w, override=6).overflow_possible


@pytest.mark.parametrize(
    "lo, hi, bits",
    [(0, 0, 1), (0, 1, 1), (0, 255, 8), (0, 256, 9), (-1, 0, 1), (-128, 127, 8), (-129, 0, 9), (-5, 128, 9), (-9400320, 9326880, 25)],
)
def test_bits_for_range(lo, hi, bits):
    assert bits_for_range(lo, hi) == bits


def test_worst_case_at_most_the_classic_bound():
    for mw in (1, 3, 9, 288, 4608):
        for w in (2, 4, 8):
            for a in (2, 4, 8):
                b = accumulator_bits(mw, w, a).worst
                assert b <= w + a + int(np.ceil(np.log2(mw))) + 1


@given(st.integers(1, 6), st.integers(1, 12), st.integers(2, 8), st.integers(2, 8), st.booleans(), st.integers(0, 2**32 - 1))
def test_tight_bound_holds_and_is_never_wider(mh, mw, w_bits, a_bits, a_signed, seed):
    rng = np.random.default_rng(seed)
    wl, wh = int_range(w_bits, True)
    al, ah = int_range(a_bits, a_signed)
    w = rng.integers(wl, wh + 1, size=(mh, mw))
    acc = accumulator_bits(mw, w_bits, a_bits, weights=w, a_signed=a_signed)
    assert acc.tight <= acc.worst
    # the extreme inputs per channel reach the bound; random ones stay inside
    x = np.concatenate([rng.integers(al, ah + 1, size=(50, mw)), np.where(w > 0, ah, al), np.where(w > 0, al, ah)])
    check_fits(accumulate(x, w), acc.tight, "t", acc.signed)


def test_check_fits_names_layer():
    with pytest.raises(AccumulatorOverflowError, match="layer 'fc'.*8-bit signed"):
        check_fits(np.array([[200]]), 8, "fc")


def test_narrow_wrap_and_saturate():
    assert narrow(np.array([127, 128, -129, 300]), 8, "wrap").tolist() == [127, -128, 127, 44]
    assert narrow(np.array([127, 128, -129, 300]), 8, "saturate").tolist() == [127, 127, -128, 127]
    assert narrow(np.array([255, 256]), 8, "wrap", signed=False).tolist() == [255, 0]
    x, w = np.array([[100, 100, -100]]), np.array([[1, 1, 1]])
    # one product per cycle: 100 -> 200 saturates to 127 -> 27; exact sum 100 fits
    assert accumulate(x, w, simd=1, bits=8, mode="saturate").tolist() == [[27]]
    assert accumulate(x, w, simd=3, bits=8, mode="saturate").tolist() == [[100]]
    assert accumulate(x, w, bits=8, mode="wrap").tolist() == [[100]]  # wrapping is order-free
    with pytest.raises(ValueError, match="SIMD"):
        accumulate(x, w, bits=8, mode="saturate")


@given(hnp.arrays(np.int64, st.tuples(st.integers(1, 4), st.integers(1, 8)), elements=st.integers(-300, 300)), st.integers(2, 12))
def test_wrap_equals_sequential_wrapping(x, bits):
    w = np.ones((2, x.shape[1]), dtype=np.int64)
    seq = np.zeros((x.shape[0], 2), dtype=np.int64)
    for s in range(x.shape[1]):
        seq = narrow(seq + x[:, s : s + 1] @ w[:, s : s + 1].T, bits, "wrap")
    assert np.array_equal(seq, accumulate(x, w, bits=bits, mode="wrap"))
