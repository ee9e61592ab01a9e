"""GPU checks (marker ``gpu``; tests/conftest.py skips them without a GPU and CuPy):
the CUDA kernels are bit-exact against the CPU twins, on shapes that are and are not
multiples of the 128 x 128 x 64 tile, and the fused epilogue equals quant.requantize.
"""

from __future__ import annotations

import numpy as np
import pytest

from qatlab.kernels import get_kernel, int8_gemm_ref, int8_gemm_requant_ref, int8_linear

pytestmark = pytest.mark.gpu

SHAPES = [
    (1, 1, 1),
    (128, 128, 64),  # exactly one tile
    (256, 256, 256),
    (129, 130, 65),  # one past the tile in every dimension
    (127, 33, 17),
    (3, 200, 1000),
    (1000, 10, 128),  # fc2-like: N far below the tile
    (300, 32, 9),  # conv1-like: K = 9 (padded to 16 by the launcher)
    (64, 64, 288),
    (513, 257, 3136),
]
IMPLS = [("int8_gemm", "int8_gemm_requant"), ("int8_gemm_dp4a", "int8_gemm_dp4a_requant")]


def _operands(seed: int, m: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, (m, k), dtype=np.int8), rng.integers(-128, 128, (n, k), dtype=np.int8)


@pytest.mark.parametrize("impl", IMPLS, ids=["mma", "dp4a"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_bit_exact(impl: tuple[str, str], shape: tuple[int, int, int]) -> None:
    a, b = _operands(sum(shape), *shape)
    got = get_kernel(impl[0], "cuda")(a, b)
    np.testing.assert_array_equal(got, int8_gemm_ref(a, b))


@pytest.mark.parametrize("impl", IMPLS, ids=["mma", "dp4a"])
def test_gemm_random_shapes(impl: tuple[str, str]) -> None:
    rng = np.random.default_rng(1)
    for _ in range(25):
        m, n, k = (int(v) for v in rng.integers(1, 700, 3))
        a, b = _operands(int(rng.integers(1 << 30)), m, n, k)
        np.testing.assert_array_equal(get_kernel(impl[0], "cuda")(a, b), int8_gemm_ref(a, b), err_msg=f"{m}x{n}x{k}")


def test_gemm_extreme_values() -> None:
    for fill_a, fill_b in ((-128, -128), (127, -128), (127, 127)):
        a = np.full((130, 4096), fill_a, np.int8)
        b = np.full((70, 4096), fill_b, np.int8)
        for impl in IMPLS:
            np.testing.assert_array_equal(get_kernel(impl[0], "cuda")(a, b), int8_gemm_ref(a, b))


@pytest.mark.parametrize("impl", IMPLS, ids=["mma", "dp4a"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("unsigned", [False, True], ids=["int8", "uint8"])
def test_fused_epilogue_equals_cpu_requantize(impl: tuple[str, str], shape: tuple[int, int, int], unsigned: bool) -> None:
    m, n, k = shape
    a, b = _operands(sum(shape) + 7, m, n, k)
    rng = np.random.default_rng(k)
    bias = rng.integers(-(2**16), 2**16, n).astype(np.int32)
    # multipliers around 1 / (typical |acc|) so outputs spread over the whole range,
    # plus exact-tie multipliers (0.5, 0.25) to exercise round half to even
    mult = rng.uniform(0.1, 4.0, n) / (128.0 * np.sqrt(k) * 16)
    mult[: min(n, 2)] = [0.5, 0.25][: min(n, 2)]
    qmin, qmax, zp = (0, 255, 7) if unsigned else (-128, 127, -3)
    got = get_kernel(impl[1], "cuda")(a, b, bias, mult, zp, qmin, qmax)
    want = int8_gemm_requant_ref(a, b, bias, mult, zp, qmin, qmax)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_int8_linear_cuda_torch_tensors() -> None:
    import torch

    a, b = _operands(3, 333, 77, 300)
    bias = np.arange(77, dtype=np.int32) * 11
    mult = np.linspace(1e-4, 3e-3, 77)
    want = int8_gemm_requant_ref(a, b, bias, mult, 0, -128, 127)
    x = torch.from_numpy(a).cuda()
    w = torch.from_numpy(b).cuda()
    got = int8_linear(x, w, torch.from_numpy(bias).cuda(), torch.from_numpy(mult).cuda(), 0, -128, 127, backend="cuda")
    assert isinstance(got, torch.Tensor) and got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), want)


def test_cuda_rejects_bad_device_inputs() -> None:
    import cupy

    from qatlab.kernels import KernelInputError

    a = cupy.zeros((8, 32), cupy.int8)
    with pytest.raises(KernelInputError, match="contiguous"):
        get_kernel("int8_gemm", "cuda")(cupy.zeros((32, 8), cupy.int8).T, cupy.zeros((4, 32), cupy.int8)[:, :8])
    with pytest.raises(KernelInputError, match="K mismatch"):
        get_kernel("int8_gemm", "cuda")(a, cupy.zeros((4, 16), cupy.int8))
    with pytest.raises(KernelInputError, match="dtype int8"):
        get_kernel("int8_gemm", "cuda")(a.astype(cupy.int32), cupy.zeros((4, 32), cupy.int8))
