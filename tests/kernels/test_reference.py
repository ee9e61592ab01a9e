"""CPU twins, registry and input validation (no GPU needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qatlab.kernels import (
    CupyUnavailableError,
    KernelInputError,
    UnknownKernelError,
    cuda_available,
    get_kernel,
    int8_gemm_ref,
    int8_gemm_requant_ref,
    int8_linear,
    kernel_names,
)
from qatlab.quant import requantize


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_gemm_ref_matches_torch_int64(m: int, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = _rand(rng, m, k), _rand(rng, n, k)
    want = (torch.from_numpy(a).long() @ torch.from_numpy(b).long().t()).numpy()
    got = int8_gemm_ref(a, b)
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, want)


def test_gemm_ref_extremes_are_exact() -> None:
    # all -128: the largest magnitude products, K = 4096 -> 2^26, well inside int32
    a = np.full((3, 4096), -128, np.int8)
    b = np.full((2, 4096), -128, np.int8)
    assert (int8_gemm_ref(a, b) == 4096 * 16384).all()
    # torch's own int8 GEMM agrees
    np.testing.assert_array_equal(int8_gemm_ref(a, b), torch._int_mm(torch.from_numpy(a), torch.from_numpy(b).t().contiguous()).numpy())


@given(
    m=st.integers(1, 20),
    n=st.integers(1, 20),
    k=st.integers(1, 50),
    seed=st.integers(0, 2**16),
    unsigned=st.booleans(),
)
def test_requant_ref_equals_quant_requantize(m: int, n: int, k: int, seed: int, unsigned: bool) -> None:
    rng = np.random.default_rng(seed)
    a, b = _rand(rng, m, k), _rand(rng, n, k)
    bias = rng.integers(-(2**15), 2**15, size=n).astype(np.int32)
    mult = rng.uniform(1e-5, 1e-2, size=n)
    qmin, qmax, zp = (0, 255, int(rng.integers(0, 256))) if unsigned else (-128, 127, int(rng.integers(-128, 128)))
    got = int8_gemm_requant_ref(a, b, bias, mult, zp, qmin, qmax)
    acc = torch.from_numpy(a).long() @ torch.from_numpy(b).long().t() + torch.from_numpy(bias).long()
    want = requantize(acc, torch.from_numpy(mult), zp, qmin, qmax, mode="float").numpy()
    assert got.dtype == (np.uint8 if unsigned else np.int8)
    np.testing.assert_array_equal(got.astype(np.int64), want)


def test_requant_rounds_half_to_even() -> None:
    # acc = 1 * 1 * K with K odd and M = 0.5 -> exact .5 ties: 5*0.5=2.5 -> 2, 7*0.5=3.5 -> 4
    for k, want in ((5, 2), (7, 4), (3, 2), (1, 0)):
        a = np.ones((1, k), np.int8)
        b = np.ones((1, k), np.int8)
        y = int8_gemm_requant_ref(a, b, np.zeros(1, np.int32), np.array([0.5]), 0, -128, 127)
        assert int(y[0, 0]) == want, (k, y)
    y = int8_gemm_requant_ref(-np.ones((1, 5), np.int8), np.ones((1, 5), np.int8), np.zeros(1, np.int32), np.array([0.5]), 0, -128, 127)
    assert int(y[0, 0]) == -2


def test_requant_saturates_and_per_channel_zero_point() -> None:
    a = np.full((2, 8), 127, np.int8)
    b = np.stack([np.full(8, 127, np.int8), np.full(8, -128, np.int8), np.zeros(8, np.int8)])
    y = int8_gemm_requant_ref(a, b, np.zeros(3, np.int32), np.ones(3), np.array([0, 0, 5]), -128, 127)
    assert y.tolist() == [[127, -128, 5]] * 2


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.zeros((4, 8), np.int16), np.zeros((3, 8), np.int8), "dtype int8"),
        (np.zeros((4, 8), np.int8), np.zeros((3, 8), np.float32), "dtype int8"),
        (np.zeros((4, 8), np.int8), np.zeros((3, 7), np.int8), "K mismatch"),
        (np.zeros((0, 8), np.int8), np.zeros((3, 8), np.int8), "empty"),
        (np.zeros((4, 0), np.int8), np.zeros((3, 0), np.int8), "empty"),
        (np.zeros((8, 4), np.int8).T, np.zeros((3, 8), np.int8), "contiguous"),
        (np.zeros((4, 8, 1), np.int8), np.zeros((3, 8), np.int8), "2-D"),
    ],
)
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_bad_inputs_rejected_before_launch(a: np.ndarray, b: np.ndarray, match: str, backend: str) -> None:
    # For host operands the cuda launcher validates before even importing CuPy.
    with pytest.raises(KernelInputError, match=match):
        get_kernel("int8_gemm", backend)(a, b)


def test_bad_epilogue_params() -> None:
    a, b = np.zeros((2, 4), np.int8), np.zeros((3, 4), np.int8)
    ok = dict(bias=np.zeros(3, np.int32), multiplier=np.ones(3), zero_point=0, qmin=-128, qmax=127)
    for key, val, match in [
        ("bias", np.zeros(2, np.int32), "bias must have shape"),
        ("bias", np.zeros(3, np.float32), "bias must be integer"),
        ("multiplier", np.ones(4), "multiplier must have shape"),
        ("multiplier", np.array([1.0, np.nan, 1.0]), "finite"),
        ("qmax", 300, "fits neither"),
        ("zero_point", np.zeros(2, np.int64), "zero_point"),
    ]:
        kw = dict(ok, **{key: val})
        with pytest.raises(KernelInputError, match=match):
            int8_gemm_requant_ref(a, b, **kw)


def test_registry_names_and_errors() -> None:
    assert set(kernel_names()) == {
        "int8_gemm",
        "int8_gemm_requant",
        "int8_gemm_dp4a",
        "int8_gemm_dp4a_requant",
        "int8_conv2d",
        "int8_conv2d_requant",
        "int8_conv2d_direct",
        "int8_conv2d_direct_requant",
    }
    for name in kernel_names():
        assert callable(get_kernel(name, "cpu"))
        assert callable(get_kernel(name, "cuda"))  # lookup never needs CuPy
    with pytest.raises(UnknownKernelError, match="unknown kernel"):
        get_kernel("int4_gemm", "cpu")
    with pytest.raises(UnknownKernelError, match="unknown backend"):
        get_kernel("int8_gemm", "rocm")


@pytest.mark.skipif(cuda_available(), reason="CuPy and a GPU are present here")
def test_cuda_without_cupy_names_what_to_install() -> None:
    a, b = np.zeros((2, 4), np.int8), np.zeros((3, 4), np.int8)
    with pytest.raises(CupyUnavailableError, match=r"gpu.*cupy-cuda12x") as ei:
        get_kernel("int8_gemm", "cuda")(a, b)
    assert isinstance(ei.value, ImportError)


def test_int8_linear_cpu_numpy_and_torch(rng: np.random.Generator) -> None:
    x, w = _rand(rng, 7, 33), _rand(rng, 5, 33)
    bias = rng.integers(-1000, 1000, 5).astype(np.int32)
    mult = rng.uniform(1e-4, 1e-2, 5)
    want = int8_gemm_requant_ref(x, w, bias, mult, 3, -128, 127)
    np.testing.assert_array_equal(int8_linear(x, w, bias, mult, 3, -128, 127, backend="cpu"), want)
    got_t = int8_linear(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias), torch.from_numpy(mult), 3, -128, 127, backend="cpu"
    )
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_array_equal(got_t.numpy(), want)
    with pytest.raises(ValueError, match="impl"):
        int8_linear(x, w, bias, mult, 3, -128, 127, backend="cpu", impl="wmma")
