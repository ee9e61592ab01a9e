"""The convolution twins (conv_reference.py) against torch's conv2d, the zero-point
route they document, and the operand checks every conv backend runs before a launch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from qatlab.kernels import (
    CupyUnavailableError,
    KernelInputError,
    cuda_available,
    get_kernel,
    input_zero_point_correction,
    int8_conv2d_ref,
    int8_conv2d_requant_ref,
)
from qatlab.kernels.validate import check_conv_operands
from qatlab.quant import requantize

CONV_NAMES = ("int8_conv2d", "int8_conv2d_requant", "int8_conv2d_direct", "int8_conv2d_direct_requant")


def torch_conv(x: np.ndarray, w: np.ndarray, stride: tuple, padding: tuple, dilation: tuple, pad_value: int) -> np.ndarray:
    """float64 NCHW conv2d with the padding filled by pad_value; exact, every partial sum
    of int8 products here is far below 2^53. NHWC int64 out."""
    xt = torch.from_numpy(x).double().permute(0, 3, 1, 2)
    xt = F.pad(xt, (padding[1], padding[1], padding[0], padding[0]), value=float(pad_value))
    y = F.conv2d(xt, torch.from_numpy(w).double().permute(0, 3, 1, 2), stride=stride, dilation=dilation)
    return y.permute(0, 2, 3, 1).numpy().astype(np.int64)


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


conv_case = st.fixed_dictionaries(
    {
        "n": st.integers(1, 3),
        "h": st.integers(1, 11),
        "w": st.integers(1, 11),
        "c": st.integers(1, 20),
        "k": st.integers(1, 9),
        "r": st.integers(1, 4),
        "s": st.integers(1, 4),
        "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
        "padding": st.tuples(st.integers(0, 3), st.integers(0, 3)),
        "dilation": st.tuples(st.integers(1, 3), st.integers(1, 3)),
        "pad_value": st.integers(-128, 127),
        "seed": st.integers(0, 2**16),
    }
)


def _out_ok(p: dict) -> bool:
    return all(
        size + 2 * pad - dil * (f - 1) - 1 >= 0
        for size, pad, dil, f in ((p["h"], p["padding"][0], p["dilation"][0], p["r"]), (p["w"], p["padding"][1], p["dilation"][1], p["s"]))
    )


@given(p=conv_case)
def test_conv_ref_matches_torch_conv2d(p: dict) -> None:
    assume(_out_ok(p))
    rng = np.random.default_rng(p["seed"])
    x, w = _rand(rng, p["n"], p["h"], p["w"], p["c"]), _rand(rng, p["k"], p["r"], p["s"], p["c"])
    got = int8_conv2d_ref(x, w, p["stride"], p["padding"], p["dilation"], p["pad_value"])
    want = torch_conv(x, w, p["stride"], p["padding"], p["dilation"], p["pad_value"])
    assert got.dtype == np.int32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@given(p=conv_case, unsigned=st.booleans())
def test_conv_requant_ref_equals_quant_requantize(p: dict, unsigned: bool) -> None:
    assume(_out_ok(p))
    rng = np.random.default_rng(p["seed"])
    x, w = _rand(rng, p["n"], p["h"], p["w"], p["c"]), _rand(rng, p["k"], p["r"], p["s"], p["c"])
    bias = rng.integers(-(2**15), 2**15, p["k"]).astype(np.int32)
    mult = rng.uniform(1e-5, 1e-2, p["k"])
    qmin, qmax, zp = (0, 255, int(rng.integers(0, 256))) if unsigned else (-128, 127, int(rng.integers(-128, 128)))
    geo = (p["stride"], p["padding"], p["dilation"], p["pad_value"])
    got = int8_conv2d_requant_ref(x, w, bias, mult, zp, qmin, qmax, *geo)
    acc = torch.from_numpy(torch_conv(x, w, *geo)) + torch.from_numpy(bias).long()
    want = requantize(acc, torch.from_numpy(mult), zp, qmin, qmax, mode="float").numpy()
    assert got.dtype == (np.uint8 if unsigned else np.int8)
    np.testing.assert_array_equal(got.astype(np.int64), want)


def test_conv_ref_int_and_pair_arguments_agree_and_defaults() -> None:
    rng = np.random.default_rng(1)
    x, w = _rand(rng, 2, 7, 6, 5), _rand(rng, 3, 3, 3, 5)
    np.testing.assert_array_equal(int8_conv2d_ref(x, w, 2, 1, 1), int8_conv2d_ref(x, w, (2, 2), (1, 1), (1, 1)))
    assert int8_conv2d_ref(x, w).shape == (2, 5, 4, 3)  # no padding: H - R + 1
    np.testing.assert_array_equal(int8_conv2d_ref(x, w), torch_conv(x, w, (1, 1), (0, 0), (1, 1), 0))


def test_conv_ref_extremes_are_exact() -> None:
    # ResNet-sized reduction, largest products: 3*3*512 * 16384 = 75497472 < 2^31
    x = np.full((1, 4, 4, 512), -128, np.int8)
    w = np.full((2, 3, 3, 512), -128, np.int8)
    y = int8_conv2d_ref(x, w, padding=1, pad_value=-128)
    assert (y == 9 * 512 * 16384).all()
    y0 = int8_conv2d_ref(x, w, padding=1, pad_value=0)  # corners see 4 of 9 taps
    assert y0[0, 0, 0, 0] == 4 * 512 * 16384 and y0[0, 1, 1, 0] == 9 * 512 * 16384


@pytest.mark.parametrize("unsigned", [True, False], ids=["uint8-codes", "int8-codes"])
def test_zero_point_route_is_exact(unsigned: bool) -> None:
    """Codes q with zero point z: kernel on (q − o) with pad_value = z − o, plus the bias
    correction, equals Σ w·(q − z) with real zero padding (the IntModel's meaning)."""
    rng = np.random.default_rng(3)
    if unsigned:
        q, z, o = rng.integers(0, 256, (2, 9, 8, 6)), 37, 128
    else:
        q, z, o = rng.integers(-128, 128, (2, 9, 8, 6)), -5, 0
    w = _rand(rng, 4, 3, 3, 6)
    x = (q - o).astype(np.int8)
    acc = int8_conv2d_ref(x, w, 2, (1, 2), (2, 1), pad_value=z - o).astype(np.int64)
    got = acc + input_zero_point_correction(w, z, o)
    xt = torch.from_numpy((q - z).astype(np.float64)).permute(0, 3, 1, 2)
    want = F.conv2d(xt, torch.from_numpy(w).double().permute(0, 3, 1, 2), stride=2, padding=(1, 2), dilation=(2, 1))
    np.testing.assert_array_equal(got, want.permute(0, 2, 3, 1).numpy().astype(np.int64))


def test_geometry_and_gemm_view() -> None:
    x, w = np.zeros((2, 56, 56, 64), np.int8), np.zeros((128, 3, 3, 64), np.int8)
    g = check_conv_operands(x, w, stride=2, padding=1)
    assert (g.oh, g.ow) == (28, 28) and g.out_shape == (2, 28, 28, 128)
    assert g.gemm_mnk == (2 * 28 * 28, 128, 9 * 64)


_X, _W = np.zeros((1, 5, 5, 8), np.int8), np.zeros((4, 3, 3, 8), np.int8)
BAD = [
    ((_X.astype(np.int16), _W), {}, "dtype int8"),
    ((_X, _W.astype(np.float32)), {}, "dtype int8"),
    ((_X[0], _W), {}, "4-D"),
    ((np.zeros((1, 5, 8, 5), np.int8).transpose(0, 1, 3, 2), _W), {}, "contiguous"),
    ((_X, np.zeros((4, 3, 3, 7), np.int8)), {}, "channel mismatch"),
    ((np.zeros((0, 5, 5, 8), np.int8), _W), {}, "empty"),
    ((np.zeros((1, 5, 5, 0), np.int8), np.zeros((4, 3, 3, 0), np.int8)), {}, "empty"),
    ((_X, np.zeros((0, 3, 3, 8), np.int8)), {}, "empty"),
    ((_X, np.zeros((4, 7, 3, 8), np.int8)), {}, "output size"),
    ((_X, _W), {"dilation": 3}, "output size"),
    ((_X, _W), {"stride": 0}, "stride"),
    ((_X, _W), {"padding": -1}, "padding"),
    ((_X, _W), {"dilation": (1, 0)}, "dilation"),
    ((_X, _W), {"stride": (1, 2, 3)}, "stride"),
    ((_X, _W), {"padding": 1.5}, "padding"),
    ((_X, _W), {"pad_value": 128}, "pad_value"),
    ((_X, _W), {"pad_value": 1.0}, "pad_value"),
    ((_X, _W), {"groups": 2}, "groups"),
]


@pytest.mark.parametrize("args, kwargs, match", BAD, ids=[f"{m}-{i}" for i, (_, _, m) in enumerate(BAD)])
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("name", ["int8_conv2d", "int8_conv2d_direct"])
def test_bad_conv_inputs_rejected_before_launch(args: tuple, kwargs: dict, match: str, backend: str, name: str) -> None:
    # host operands: the cuda launchers validate before even importing CuPy
    with pytest.raises(KernelInputError, match=match):
        get_kernel(name, backend)(*args, **kwargs)


def test_bad_conv_epilogue_params() -> None:
    ok = dict(bias=np.zeros(4, np.int32), multiplier=np.ones(4), zero_point=0, qmin=-128, qmax=127)
    for key, val, match in [
        ("bias", np.zeros(3, np.int32), "bias must have shape"),
        ("multiplier", np.array([1.0, np.inf, 1.0, 1.0]), "finite"),
        ("qmin", -300, "fits neither"),
    ]:
        with pytest.raises(KernelInputError, match=match):
            int8_conv2d_requant_ref(_X, _W, **dict(ok, **{key: val}))


def test_conv_names_in_registry_on_both_backends() -> None:
    for name in CONV_NAMES:
        assert callable(get_kernel(name, "cpu"))
        assert callable(get_kernel(name, "cuda"))  # lookup never needs CuPy
    x = _rand(np.random.default_rng(0), 1, 6, 6, 3)
    w = _rand(np.random.default_rng(1), 2, 3, 3, 3)
    np.testing.assert_array_equal(get_kernel("int8_conv2d_direct", "cpu")(x, w, padding=1), int8_conv2d_ref(x, w, padding=1))


@pytest.mark.skipif(cuda_available(), reason="CuPy and a GPU are present here")
@pytest.mark.parametrize("name", ["int8_conv2d", "int8_conv2d_direct"])
def test_cuda_conv_without_cupy_names_what_to_install(name: str) -> None:
    with pytest.raises(CupyUnavailableError, match=r"gpu.*cupy-cuda12x"):
        get_kernel(name, "cuda")(_X, _W, padding=1)
