import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from qatlab.quant import (
    QuantSpec,
    compute_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_reference,
    quantize,
    sqnr_db,
)
from qatlab.quant.granularity import to_rows
from tests.conftest import float_tensors, low_bits_st


def _native(x, qp, axis=None):
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax)
    return torch.fake_quantize_per_channel_affine(x, qp.scale, qp.zero_point, axis, qp.qmin, qp.qmax)


@given(x=float_tensors(), bits=st.sampled_from([2, 3, 4, 8]), symmetric=st.booleans())
def test_per_tensor_minmax_equals_torch_native(x, bits, symmetric):
    spec = QuantSpec(bits=bits, symmetric=symmetric, estimator="minmax")
    qp = compute_qparams(x, spec)
    expected = _native(x, qp)
    assert torch.equal(fake_quantize(x, spec), expected)
    assert torch.equal(fake_quantize_reference(x, spec), expected)


@given(x=float_tensors(min_dims=2), bits=st.sampled_from([2, 4, 6, 8]), symmetric=st.booleans(), data=st.data())
def test_per_channel_minmax_equals_torch_native(x, bits, symmetric, data):
    axis = data.draw(st.integers(0, x.dim() - 1))
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity="channel", axis=axis)
    qp = compute_qparams(x, spec)
    expected = _native(x, qp, axis)
    assert torch.equal(fake_quantize(x, spec), expected)
    assert torch.equal(fake_quantize_reference(x, spec), expected)


@given(x=float_tensors(min_dims=2, max_side=8), bits=low_bits_st, symmetric=st.booleans(), g=st.sampled_from([1, 2, 4]))
def test_group_and_element_fast_path_equals_reference(x, bits, symmetric, g):
    for gran in (f"group:{g}", "element"):
        spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=gran, axis=0)
        try:
            y = fake_quantize(x, spec)
        except ValueError as e:  # group size must divide the per-channel length
            assert "does not divide" in str(e)
            continue
        assert torch.equal(y, fake_quantize_reference(x, spec))


@given(x=float_tensors(), bits=low_bits_st, symmetric=st.booleans())
@example(x=torch.tensor([0.001, -0.001]), bits=7, symmetric=False)  # both ends exactly half a step off
def test_round_trip_error_within_half_step(x, bits, symmetric):
    spec = QuantSpec(bits=bits, symmetric=symmetric)
    q, qp = quantize(x, spec)
    err = (dequantize(q, qp) - x).abs()
    s = float(qp.scale)
    # minmax covers the whole tensor, so every value is inside the range and the exact
    # error is at most s/2 (reached when the zero point's rounding puts both ends on a
    # half step, e.g. ±0.001 at 7 bits). In float32, x/s, the dequantized value and the
    # difference each round once more, by at most an ulp of the values involved: that
    # slack scales with max|x|, not with s.
    ulp = torch.finfo(torch.float32).eps * float(x.abs().max())
    assert float(err.max()) <= s / 2 * (1 + 1e-6) + 4 * ulp + 1e-30


def test_values_outside_the_range_clip():
    x = torch.linspace(-1, 1, 101)
    spec = QuantSpec(bits=4)
    qp = compute_qparams(x, spec)
    y = fake_quantize(torch.tensor([-5.0, 5.0, 0.0]), spec, qp)
    s = float(qp.scale)
    assert y.tolist() == pytest.approx([spec.qmin * s, spec.qmax * s, 0.0])


def test_round_half_to_even():
    spec = QuantSpec(bits=8)
    qp = compute_qparams(torch.tensor([-127.0, 127.0]), spec)  # scale exactly 1
    assert float(qp.scale) == 1.0
    q, _ = quantize(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]), spec, qp)
    assert q.tolist() == [0, 2, 2, 0, -2, -2]


def test_quantized_dtypes():
    x = torch.randn(10)
    assert quantize(x, QuantSpec(bits=8))[0].dtype == torch.int8
    assert quantize(x, QuantSpec(bits=8, symmetric=False))[0].dtype == torch.uint8
    assert quantize(x, QuantSpec(bits=4))[0].dtype == torch.int8
    assert quantize(x, QuantSpec(bits=12))[0].dtype == torch.int16
    assert quantize(x, QuantSpec(bits=16, symmetric=False))[0].dtype == torch.int32


def test_sqnr_8bit_per_channel_gaussian_and_halfrange_cost(gen):
    w = torch.randn(128, 576, generator=gen)
    std = QuantSpec(bits=8, granularity="channel")
    half = std.with_(scale_rule="halfrange")
    s_std = sqnr_db(w, fake_quantize(w, std))
    s_half = sqnr_db(w, fake_quantize(w, half))
    assert s_std >= 40.0
    assert 5.0 <= s_std - s_half <= 7.0


def test_halfrange_maps_r_onto_quarter_of_codes():
    x = torch.tensor([-1.0, 1.0])
    q, qp = quantize(x, QuantSpec(bits=8, scale_rule="halfrange"))
    assert q.tolist() == [-64, 64]


def test_group_scales_are_per_block():
    x = torch.arange(1.0, 9.0).reshape(2, 4)  # rows [1..4], [5..8]
    q, qp = quantize(x, QuantSpec(bits=8, granularity="group:2"))
    assert qp.scale.numel() == 4
    expected = torch.tensor([2.0, 4.0, 6.0, 8.0]) / 127
    assert torch.allclose(qp.scale, expected)
    assert torch.allclose(dequantize(q, qp), x, atol=float(expected.max()) / 2)


def test_channel_axis_any_dim():
    x = torch.randn(3, 5, 7)
    for axis in (0, 1, 2, -1):
        spec = QuantSpec(granularity="channel", axis=axis)
        qp = compute_qparams(x, spec)
        assert qp.scale.numel() == x.shape[axis]
        ref = x.abs().amax(dim=[d for d in range(3) if d != axis % 3]) / 127
        assert torch.allclose(qp.scale, ref)


def test_element_granularity_is_near_lossless():
    x = torch.randn(50)
    y = fake_quantize(x, QuantSpec(bits=2, granularity="element"))
    assert sqnr_db(x, y) > 100


def test_fake_quantize_gradient_is_clipped_ste():
    spec = QuantSpec(bits=4)
    qp = compute_qparams(torch.tensor([-1.0, 1.0]), spec)
    x = torch.tensor([-3.0, -0.5, 0.2, 0.9, 3.0], requires_grad=True)
    fake_quantize(x, spec, qp).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


# ---- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("estimator", ["minmax", "ema", "meanstd", "percentile", "mse", "entropy"])
def test_non_finite_input_is_an_error(bad, estimator):
    x = torch.randn(300)
    x[7] = bad
    with pytest.raises(ValueError, match="NaN or ±Inf"):
        fake_quantize(x, QuantSpec(estimator=estimator))


def test_non_finite_input_with_given_qparams_is_an_error():
    qp = compute_qparams(torch.randn(5), QuantSpec())
    with pytest.raises(ValueError, match="x contains NaN"):
        quantize(torch.tensor([1.0, float("nan"), 0, 0, 0]), QuantSpec(), qp)


@pytest.mark.parametrize("gran", ["tensor", "channel", "group:2", "element"])
def test_empty_tensor_gives_empty(gran):
    x = torch.empty(4, 0)
    spec = QuantSpec(granularity=gran)
    y = fake_quantize(x, spec)
    assert y.shape == x.shape
    q, qp = quantize(x, spec)
    assert q.shape == x.shape and bool((qp.scale > 0).all())
    assert dequantize(q, qp).shape == x.shape


@pytest.mark.parametrize("gran", ["tensor", "channel", "group:3", "element"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("estimator", ["minmax", "meanstd", "percentile", "mse"])
def test_all_zero_gives_zeros_with_valid_scale(gran, symmetric, estimator):
    x = torch.zeros(4, 6)
    spec = QuantSpec(granularity=gran, symmetric=symmetric, estimator=estimator)
    q, qp = quantize(x, spec)
    assert bool(torch.isfinite(qp.scale).all()) and bool((qp.scale > 0).all())
    assert torch.equal(dequantize(q, qp), x)
    assert torch.equal(fake_quantize(x, spec), x)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.int64, torch.bool])
def test_integer_input_is_a_type_error(dtype):
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        fake_quantize(torch.zeros(3, dtype=dtype), QuantSpec())


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        quantize([1.0, 2.0], QuantSpec())


@pytest.mark.parametrize("axis", [2, -3, 5])
def test_axis_out_of_range(axis):
    with pytest.raises(ValueError, match="axis"):
        fake_quantize(torch.randn(3, 4), QuantSpec(granularity="channel", axis=axis))


def test_group_that_does_not_divide():
    with pytest.raises(ValueError, match="group size 5 does not divide"):
        fake_quantize(torch.randn(3, 8), QuantSpec(granularity="group:5"))


def test_channel_on_scalar():
    with pytest.raises(ValueError, match="axis"):
        fake_quantize(torch.tensor(1.0), QuantSpec(granularity="channel"))


def test_dequantize_rejects_floats_and_mismatched_qparams():
    q, qp = quantize(torch.randn(4, 3), QuantSpec(granularity="channel"))
    with pytest.raises(TypeError, match="q must be an integer tensor"):
        dequantize(q.float(), qp)
    with pytest.raises(ValueError, match="qparams"):
        dequantize(q.reshape(3, 4), qp)
    with pytest.raises(ValueError, match="qparams"):
        fake_quantize(torch.randn(5, 3), QuantSpec(granularity="channel"), qp)


def test_huge_finite_range_has_finite_scale():
    x = torch.tensor([-3e38, 3e38, 1.0])
    q, qp = quantize(x, QuantSpec(symmetric=False))
    assert math.isfinite(float(qp.scale))
    assert bool(torch.isfinite(dequantize(q, qp)).all())


def test_tiny_values_never_give_nan():
    x = torch.tensor([1e-40, -1e-42, 0.0])  # float32 denormals
    y = fake_quantize(x, QuantSpec())
    assert bool(torch.isfinite(y).all())


def test_rows_layout_round_trip():
    from qatlab.quant.granularity import from_rows, layout_for

    x = torch.randn(2, 3, 4, 6)
    for gran, axis in [("tensor", 0), ("channel", 2), ("group:3", 1), ("element", 0)]:
        lay = layout_for(x, QuantSpec(granularity=gran, axis=axis))
        assert torch.equal(from_rows(to_rows(x, lay), x.shape, lay), x)
