import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from qatlab.quant import multiply_by_quantized_multiplier, quantize_multiplier, requantize
from qatlab.quant.requant import (
    multiply_by_quantized_multiplier_reference,
    quantize_multiplier_reference,
    requantize_float_reference,
)
from tests.conftest import int32_arrays

multipliers = st.one_of(
    st.floats(min_value=1e-12, max_value=0.999, allow_nan=False),
    st.floats(min_value=1.0, max_value=1000.0, allow_nan=False),
    st.sampled_from([0.0, 0.5, 0.25, 1.0, 2.0**-31, 2.0**-32, 0.9999999999]),
)


@given(real=multipliers)
def test_quantize_multiplier_matches_reference_and_approximates(real):
    m, s = quantize_multiplier(real)
    assert (int(m), int(s)) == quantize_multiplier_reference(real)
    if int(m):
        assert 2**30 <= int(m) < 2**31
        assert int(m) * 2.0 ** (int(s) - 31) == pytest.approx(real, rel=2**-30)


@given(x=int32_arrays(), real=multipliers)
def test_multiply_by_quantized_multiplier_bit_exact(x, real):
    m, s = quantize_multiplier(real)
    fast = multiply_by_quantized_multiplier(torch.from_numpy(x), torch.tensor(int(m)), torch.tensor(int(s)))
    ref = [multiply_by_quantized_multiplier_reference(int(v), int(m), int(s)) for v in x]
    assert fast.tolist() == ref


@given(x=int32_arrays(), real=st.floats(min_value=1e-6, max_value=4.0), zp=st.integers(-128, 255))
@example(x=np.array([55]), real=0.9, zp=0)  # 55 * 0.9 is a tie only in float64: a float32 M rounds it down
def test_requantize_float_bit_exact(x, real, zp):
    # The IntModel stores M as float64; a float32 tensor would round M before the product.
    fast = requantize(torch.from_numpy(x), torch.tensor(real, dtype=torch.float64), zp, -128, 127, mode="float")
    ref = [requantize_float_reference(int(v), real, zp, -128, 127) for v in x]
    assert fast.tolist() == ref


def test_known_gemmlowp_values():
    # M = 0.5: m = 2^30, shift 0. The doubling high multiply rounds ties upward
    # (gemmlowp's nudge 1 - 2^30 for negative products), so -0.5 -> 0, -1.5 -> -1.
    m, s = quantize_multiplier(0.5)
    assert (int(m), int(s)) == (2**30, 0)
    x = torch.tensor([1, 2, 3, -1, -3, 5])
    assert multiply_by_quantized_multiplier(x, torch.tensor(int(m)), torch.tensor(int(s))).tolist() == [1, 1, 2, 0, -1, 3]
    # M = 0.25 (shift -1): the rounding right shift breaks ties away from zero.
    m, s = quantize_multiplier(0.25)
    x = torch.tensor([2, 6, -2, -6])
    assert multiply_by_quantized_multiplier(x, torch.tensor(int(m)), torch.tensor(int(s))).tolist() == [1, 2, -1, -2]
    # Saturating case of the doubling high multiply.
    assert multiply_by_quantized_multiplier(torch.tensor([-(2**31)]), torch.tensor(-(2**31)), torch.tensor(0)).tolist() == [2**31 - 1]


def test_fixed_and_float_paths_agree_nearly():
    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-(2**20), 2**20, (4096,), generator=g)
    M = torch.full((4096,), 0.0123456)
    m, s = quantize_multiplier(M)
    a = requantize(acc, M, 0, -128, 127, mode="float")
    b = requantize(acc, torch.from_numpy(m), 0, -128, 127, mode="fixed", shift=torch.from_numpy(s))
    assert int((a - b).abs().max()) <= 1
    assert float((a != b).float().mean()) < 0.01


def test_bad_multipliers_and_modes():
    with pytest.raises(ValueError, match="multiplier"):
        quantize_multiplier(-1.0)
    with pytest.raises(ValueError, match="multiplier"):
        quantize_multiplier(np.array([float("nan")]))
    with pytest.raises(ValueError, match="mode"):
        requantize(torch.tensor([1]), torch.tensor(1.0), 0, -128, 127, mode="banker")
    with pytest.raises(ValueError, match="shift"):
        requantize(torch.tensor([1]), torch.tensor(1), 0, -128, 127, mode="fixed")
