"""GPU checks of the convolution kernels (marker ``gpu``; tests/conftest.py skips them
without a GPU and CuPy): both CUDA kernels are bit-exact against the CPU twins, for
the int32 and the fused-requant variants, on shapes that exercise every gather path
(C % 16 == 0, C % 4 == 0, neither), odd sizes, strides, padding, dilation, N = 1,
several M/N tiles, torch tensors in and out, and the pre-launch checks on device data.
"""

from __future__ import annotations

import numpy as np
import pytest

from qatlab.kernels import KernelInputError, get_kernel, int8_conv2d_ref, int8_conv2d_requant_ref

pytestmark = pytest.mark.gpu

KERNELS = [("int8_conv2d", "int8_conv2d_requant"), ("int8_conv2d_direct", "int8_conv2d_direct_requant")]
KIDS = ["igemm", "direct"]

# (n, h, w, c, k, r, s, stride, padding, dilation, pad_value)
CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0),
    (1, 7, 7, 16, 8, 3, 3, 1, 1, 1, -7),
    (2, 9, 8, 32, 130, 3, 3, 2, 1, 1, 5),
    (1, 7, 9, 16, 20, 3, 2, (1, 2), (2, 0), (2, 3), 100),
    (3, 5, 5, 8, 6, 3, 3, 1, 1, 1, -128),
    (1, 11, 10, 12, 9, 2, 3, (2, 1), (0, 2), (3, 1), 33),
    (2, 33, 31, 3, 16, 3, 3, 2, 1, 1, 0),  # RGB stem: byte gather, C = 3
    (1, 15, 17, 20, 40, 5, 5, 1, 2, 1, -1),  # C % 16 = 4: 4-byte gather
    (1, 13, 13, 6, 7, 3, 3, 1, 1, 2, 11),  # C = 6: byte gather, dilation
    (1, 56, 56, 64, 64, 3, 3, 1, 1, 1, 0),  # ResNet conv2_x, batch 1
    (2, 28, 28, 128, 128, 3, 3, 1, 1, 1, -3),
    (4, 14, 14, 256, 256, 3, 3, 2, 1, 1, 0),  # strided 3x3
    (3, 7, 7, 512, 300, 1, 1, 1, 0, 1, 0),  # 1x1, N not a multiple of 128
    (1, 9, 9, 1024, 64, 3, 3, 1, 1, 1, 17),  # Kg = 9216: many K tiles
    (1, 12, 40, 64, 33, 1, 7, 1, (0, 3), 1, -50),  # 1x7
]


def _ids(c: tuple) -> str:
    return "x".join(map(str, c[:7])) + f"-s{c[7]}p{c[8]}d{c[9]}".replace(" ", "")


def _operands(case: tuple, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    n, h, w, c, k, r, s = case[:7]
    rng = np.random.default_rng(sum(case[:7]) + seed)
    return (rng.integers(-128, 128, (n, h, w, c), dtype=np.int8), rng.integers(-128, 128, (k, r, s, c), dtype=np.int8))


def _geo(case: tuple) -> dict:
    return dict(stride=case[7], padding=case[8], dilation=case[9], pad_value=case[10])


@pytest.mark.parametrize("kernels", KERNELS, ids=KIDS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_conv_s32_bit_exact(kernels: tuple[str, str], case: tuple) -> None:
    x, w = _operands(case)
    got = get_kernel(kernels[0], "cuda")(x, w, **_geo(case))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, int8_conv2d_ref(x, w, **_geo(case)))


@pytest.mark.parametrize("kernels", KERNELS, ids=KIDS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("unsigned", [False, True], ids=["int8", "uint8"])
def test_conv_requant_bit_exact(kernels: tuple[str, str], case: tuple, unsigned: bool) -> None:
    x, w = _operands(case, 1)
    k, rsc = case[4], case[3] * case[5] * case[6]
    rng = np.random.default_rng(k)
    bias = rng.integers(-(2**16), 2**16, k).astype(np.int32)
    # spread outputs over the whole code range; exact-tie multipliers exercise half-to-even
    mult = rng.uniform(0.1, 4.0, k) / (128.0 * np.sqrt(rsc) * 16)
    mult[: min(k, 2)] = [0.5, 0.25][: min(k, 2)]
    qmin, qmax, zp = (0, 255, 7) if unsigned else (-128, 127, -3)
    got = get_kernel(kernels[1], "cuda")(x, w, bias, mult, zp, qmin, qmax, **_geo(case))
    want = int8_conv2d_requant_ref(x, w, bias, mult, zp, qmin, qmax, **_geo(case))
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernels", KERNELS, ids=KIDS)
def test_conv_random_shapes(kernels: tuple[str, str]) -> None:
    rng = np.random.default_rng(2)
    done = 0
    while done < 30:
        n, h, w, c, k = (
            int(v)
            for v in (
                rng.integers(1, 4),
                rng.integers(1, 30),
                rng.integers(1, 30),
                rng.choice([1, 2, 3, 4, 5, 8, 12, 16, 24, 32, 48, 64, 96]),
                rng.integers(1, 200),
            )
        )
        r, s = (int(v) for v in rng.integers(1, 6, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        padding = tuple(int(v) for v in rng.integers(0, 4, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 4, 2))
        if h + 2 * padding[0] < dilation[0] * (r - 1) + 1 or w + 2 * padding[1] < dilation[1] * (s - 1) + 1:
            continue
        pad = int(rng.integers(-128, 128))
        x = rng.integers(-128, 128, (n, h, w, c), dtype=np.int8)
        wt = rng.integers(-128, 128, (k, r, s, c), dtype=np.int8)
        geo = dict(stride=stride, padding=padding, dilation=dilation, pad_value=pad)
        np.testing.assert_array_equal(
            get_kernel(kernels[0], "cuda")(x, wt, **geo), int8_conv2d_ref(x, wt, **geo), err_msg=f"x {x.shape} w {wt.shape} {geo}"
        )
        done += 1


@pytest.mark.parametrize("kernels", KERNELS, ids=KIDS)
def test_conv_extreme_values(kernels: tuple[str, str]) -> None:
    for fx, fw, pad in ((-128, -128, -128), (127, -128, 127), (127, 127, 0)):
        x = np.full((2, 6, 6, 512), fx, np.int8)
        w = np.full((70, 3, 3, 512), fw, np.int8)
        np.testing.assert_array_equal(
            get_kernel(kernels[0], "cuda")(x, w, padding=1, pad_value=pad), int8_conv2d_ref(x, w, padding=1, pad_value=pad)
        )


def test_direct_large_filter_needs_smem_opt_in() -> None:
    # 11 x 11 filter: 32 * 121 taps * 16 B = 62 KiB of filter slice, above the 48 KiB default
    case = (1, 20, 20, 16, 40, 11, 11, 1, 5, 1, 3)
    x, w = _operands(case)
    np.testing.assert_array_equal(get_kernel("int8_conv2d_direct", "cuda")(x, w, **_geo(case)), int8_conv2d_ref(x, w, **_geo(case)))


@pytest.mark.parametrize("kernels", KERNELS, ids=KIDS)
def test_conv_torch_tensors_in_and_out_and_unaligned_input(kernels: tuple[str, str]) -> None:
    import torch

    case = (2, 10, 9, 32, 48, 3, 3, 1, 1, 1, -9)
    x, w = _operands(case)
    k = case[4]
    bias = np.arange(k, dtype=np.int32) * 7
    mult = np.linspace(1e-4, 2e-3, k)
    want = int8_conv2d_requant_ref(x, w, bias, mult, 1, -128, 127, **_geo(case))
    xt, wt = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
    got = get_kernel(kernels[1], "cuda")(xt, wt, torch.from_numpy(bias).cuda(), torch.from_numpy(mult).cuda(), 1, -128, 127, **_geo(case))
    assert isinstance(got, torch.Tensor) and got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    # an input starting 1 byte into its allocation: the launcher copies it to an aligned buffer
    buf = torch.empty(x.size + 1, dtype=torch.int8, device="cuda")
    xu = buf[1:].view(x.shape)
    xu.copy_(xt)
    got = get_kernel(kernels[0], "cuda")(xu, wt, **_geo(case))
    np.testing.assert_array_equal(got.cpu().numpy(), int8_conv2d_ref(x, w, **_geo(case)))
    # a channels_last NCHW tensor viewed as NHWC is the same memory, no copy
    nchw = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).cuda()
    got = get_kernel(kernels[0], "cuda")(nchw.permute(0, 2, 3, 1), wt, **_geo(case))
    np.testing.assert_array_equal(got.cpu().numpy(), int8_conv2d_ref(x, w, **_geo(case)))


@pytest.mark.parametrize("name", ["int8_conv2d", "int8_conv2d_direct"])
def test_cuda_conv_rejects_bad_device_inputs(name: str) -> None:
    import cupy

    x = cupy.zeros((1, 8, 8, 16), cupy.int8)
    w = cupy.zeros((4, 3, 3, 16), cupy.int8)
    fn = get_kernel(name, "cuda")
    with pytest.raises(KernelInputError, match="contiguous"):
        fn(cupy.zeros((1, 8, 16, 8), cupy.int8).transpose(0, 1, 3, 2), w)
    with pytest.raises(KernelInputError, match="channel mismatch"):
        fn(x, cupy.zeros((4, 3, 3, 8), cupy.int8))
    with pytest.raises(KernelInputError, match="dtype int8"):
        fn(x.astype(cupy.int32), w)
    with pytest.raises(KernelInputError, match="output size"):
        fn(x, cupy.zeros((4, 9, 9, 16), cupy.int8))
    with pytest.raises(KernelInputError, match="bias must"):
        get_kernel(name + "_requant", "cuda")(x, w, cupy.zeros(3, cupy.int32), cupy.ones(4), 0, -128, 127)
