"""CUDA launchers of the int8 convolution kernels (CuPy RawModule, compiled by NVRTC).

* ``int8_conv2d_igemm[_requant]``  implicit GEMM on tensor cores (int8_conv2d_igemm.cu)
* ``int8_conv2d_direct[_requant]`` direct convolution with __dp4a (int8_conv2d_direct.cu)

Operands: activations NHWC ``x [N, H, W, C]`` and weights KRSC ``w [K, R, S, C]``, both
int8 and C-contiguous, as CuPy arrays, CUDA torch tensors (zero copy) or host numpy
arrays (copied over and the result copied back); the result has the kind of ``x`` and
is NHWC ``[N, OH, OW, K]``. A torch NCHW tensor in ``channels_last`` memory format is
``t.permute(0, 2, 3, 1)`` (a contiguous NHWC view, no copy). Padded taps read the int8
code ``pad_value``; conv_reference.py explains how that and a bias correction make
zero points exact. Every check (dtype, layout, channels, empty dims, output size,
parameters) runs before any launch and raises KernelInputError.

CuPy is imported lazily, as in cupy_backend, whose helpers this module shares.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .cupy_backend import (
    MMA_BM,
    MMA_BN,
    MMA_STAGES,
    MMA_THREADS,
    _as_device,
    _check_host_kind,
    allow_large_smem,
    import_cupy,
    launch_s32_or_requant,
    mma_smem_bytes,
    source_with_headers,
)
from .errors import KernelInputError
from .validate import ConvGeometry, check_conv_operands

CONV_SOURCES = {"igemm": "int8_conv2d_igemm.cu", "direct": "int8_conv2d_direct.cu"}
# The implicit-GEMM kernel uses the GEMM kernel's tiling (BM, BN, BK, LDS, THREADS,
# STAGES, GROUP_M: qatlab_mma_tile.cuh, shared by both); only its A loader differs.
IGEMM_K_ALIGN = 16  # B (weights [K, R*S*C]) rows are copied in 16-byte chunks
# Must match the #defines of int8_conv2d_direct.cu.
DIRECT_TILE_H, DIRECT_TILE_W, DIRECT_TILE_K, DIRECT_THREADS = 8, 8, 32, 256
DEFAULT_SMEM = 48 * 1024  # dynamic shared memory a kernel gets without an opt-in
INT32_LIMIT = 2**31

IntPair = int | tuple[int, int]


def conv_kernel_source(kind: str) -> str:
    """The .cu text of ``kind`` ("igemm" or "direct") exactly as CuPy compiles it."""
    return source_with_headers(CONV_SOURCES[kind])


def conv_compile_options() -> tuple[str, ...]:
    return ("-std=c++17", f"-DSTAGES={MMA_STAGES}")


def igemm_vec(c: int) -> int:
    """Gather width in bytes of the implicit-GEMM A loader for C input channels."""
    return 16 if c % 16 == 0 else 4 if c % 4 == 0 else 1


def direct_vec(c: int) -> int:
    return 16 if c % 16 == 0 else 1


def direct_smem_bytes(g: ConvGeometry) -> int:
    """Input patch (tile + halo) plus filter slice, 16 bytes (channels) per entry."""
    (sh, sw), (dh, dw) = g.stride, g.dilation
    ph = (DIRECT_TILE_H - 1) * sh + (g.r - 1) * dh + 1
    pw = (DIRECT_TILE_W - 1) * sw + (g.s - 1) * dw + 1
    return 16 * (ph * pw + DIRECT_TILE_K * g.r * g.s)


@functools.lru_cache(maxsize=None)
def _module(kind: str, device_id: int) -> Any:
    cupy = import_cupy()
    mod = cupy.RawModule(code=conv_kernel_source(kind), options=conv_compile_options())
    if kind == "igemm":
        cc = int(cupy.cuda.Device(device_id).compute_capability)
        if cc < 80:
            raise KernelInputError(f"the implicit-GEMM conv kernel needs sm_80 or newer (this device is sm_{cc}); use 'int8_conv2d_direct'")
        for vec in (16, 4, 1):
            for variant in ("s32", "requant"):
                allow_large_smem(cupy, mod.get_function(f"int8_conv2d_igemm_{variant}_v{vec}"), mma_smem_bytes())
    return mod


@functools.lru_cache(maxsize=None)
def _smem_optin_limit(device_id: int) -> int:
    cupy = import_cupy()
    attr = getattr(cupy.cuda.runtime, "cudaDevAttrMaxSharedMemoryPerBlockOptin", 97)
    return int(cupy.cuda.runtime.deviceGetAttribute(attr, device_id))


_direct_smem_set: dict[tuple[int, str], int] = {}


def _direct_function(cupy: Any, name: str, smem: int) -> Any:
    dev = cupy.cuda.Device().id
    fn = _module("direct", dev).get_function(name)
    if smem > DEFAULT_SMEM and _direct_smem_set.get((dev, name), DEFAULT_SMEM) < smem:
        limit = _smem_optin_limit(dev)
        if smem > limit:
            raise KernelInputError(
                f"the direct conv kernel needs {smem} bytes of shared memory for this filter, "
                f"stride and dilation (device limit {limit}); use 'int8_conv2d' (implicit GEMM)"
            )
        allow_large_smem(cupy, fn, smem)
        _direct_smem_set[(dev, name)] = smem
    return fn


def _aligned(cupy: Any, x: Any, align: int) -> Any:
    return x if x.data.ptr % align == 0 else x.copy()  # fresh CuPy allocations are 256-byte aligned


def _prepare(
    x: Any, w: Any, stride: Any, padding: Any, dilation: Any, groups: int, pad_value: int
) -> tuple[Any, Any, Any, str, ConvGeometry]:
    """Validate (host operands before CuPy is even imported), move to the device, re-check."""
    _check_host_kind(x, 4)
    _check_host_kind(w, 4)
    if isinstance(x, np.ndarray) and isinstance(w, np.ndarray):
        check_conv_operands(x, w, stride, padding, dilation, groups, pad_value)
    cupy = import_cupy()
    dx, kind = _as_device(cupy, x)
    dwt, _ = _as_device(cupy, w)
    g = check_conv_operands(dx, dwt, stride, padding, dilation, groups, pad_value)
    m, _, kg = g.gemm_mnk
    for what, size in (("x", g.n * g.h * g.w * g.c), ("w", g.k * kg), ("output pixels N*OH*OW", m), ("output", m * g.k)):
        if size >= INT32_LIMIT:
            raise KernelInputError(f"{what} has {size} elements; the conv kernels index with 32 bits (< 2^31)")
    return cupy, dx, dwt, kind, g


def _launch_igemm(x: Any, w: Any, epilogue: tuple | None, stride: Any, padding: Any, dilation: Any, pad_value: int, groups: int) -> Any:
    cupy, dx, dwt, kind, g = _prepare(x, w, stride, padding, dilation, groups, pad_value)
    m, n, kg = g.gemm_mnk
    vec = igemm_vec(g.c)
    kp = -(-kg // IGEMM_K_ALIGN) * IGEMM_K_ALIGN
    b = dwt.reshape(n, kg)
    if kp != kg:
        # zero columns kg..kp of B cancel whatever A holds there
        bp = cupy.zeros((n, kp), dtype=cupy.int8)
        bp[:, :kg] = b
        b = bp
    b = _aligned(cupy, b, 16)
    dx = _aligned(cupy, dx, vec)
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    shape = tuple(np.int32(v) for v in (g.h, g.w, g.c, g.k, g.s, g.oh, g.ow, sh, sw, ph, pw, dh, dw, m, kg, kp))
    grid = ((m + MMA_BM - 1) // MMA_BM, (n + MMA_BN - 1) // MMA_BN)
    mod = _module("igemm", cupy.cuda.Device().id)
    return launch_s32_or_requant(
        cupy,
        lambda fused: mod.get_function(f"int8_conv2d_igemm_{'requant' if fused else 's32'}_v{vec}"),
        grid,
        (MMA_THREADS,),
        mma_smem_bytes(),
        (dx, b),
        (*shape, np.int32(pad_value)),
        g.out_shape,
        n,
        epilogue,
        kind,
    )


def _launch_direct(x: Any, w: Any, epilogue: tuple | None, stride: Any, padding: Any, dilation: Any, pad_value: int, groups: int) -> Any:
    cupy, dx, dwt, kind, g = _prepare(x, w, stride, padding, dilation, groups, pad_value)
    vec = direct_vec(g.c)
    if vec == 16:
        dx, dwt = _aligned(cupy, dx, 16), _aligned(cupy, dwt, 16)
    smem = direct_smem_bytes(g)
    tiles = -(-g.oh // DIRECT_TILE_H) * -(-g.ow // DIRECT_TILE_W)
    grid = (tiles, -(-g.k // DIRECT_TILE_K), g.n)
    if grid[1] > 65535 or grid[2] > 65535:
        raise KernelInputError(f"direct conv grid {grid} exceeds 65535 in y or z (K={g.k}, N={g.n})")
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    geo = tuple(np.int32(v) for v in (g.h, g.w, g.c, g.k, g.r, g.s, g.oh, g.ow, sh, sw, ph, pw, dh, dw, pad_value))
    return launch_s32_or_requant(
        cupy,
        lambda fused: _direct_function(cupy, f"int8_conv2d_direct_{'requant' if fused else 's32'}_v{vec}", smem),
        grid,
        (DIRECT_THREADS,),
        smem,
        (dx, dwt),
        geo,
        g.out_shape,
        g.k,
        epilogue,
        kind,
    )


def int8_conv2d_igemm(
    x: Any, w: Any, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, pad_value: int = 0, groups: int = 1
) -> Any:
    """Tensor-core implicit-GEMM convolution: NHWC int8 (*) KRSC int8 -> int32 NHWC."""
    return _launch_igemm(x, w, None, stride, padding, dilation, pad_value, groups)


def int8_conv2d_igemm_requant(
    x: Any,
    w: Any,
    bias: Any,
    multiplier: Any,
    zero_point: Any,
    qmin: int,
    qmax: int,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    pad_value: int = 0,
    groups: int = 1,
) -> Any:
    """Implicit-GEMM convolution with the fused bias + float requantization epilogue -> 8-bit codes."""
    return _launch_igemm(x, w, (bias, multiplier, zero_point, qmin, qmax), stride, padding, dilation, pad_value, groups)


def int8_conv2d_direct(
    x: Any, w: Any, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, pad_value: int = 0, groups: int = 1
) -> Any:
    """Direct (__dp4a, shared-memory tiled) convolution: NHWC int8 (*) KRSC int8 -> int32 NHWC."""
    return _launch_direct(x, w, None, stride, padding, dilation, pad_value, groups)


def int8_conv2d_direct_requant(
    x: Any,
    w: Any,
    bias: Any,
    multiplier: Any,
    zero_point: Any,
    qmin: int,
    qmax: int,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    pad_value: int = 0,
    groups: int = 1,
) -> Any:
    """Direct convolution with the fused epilogue -> 8-bit codes."""
    return _launch_direct(x, w, (bias, multiplier, zero_point, qmin, qmax), stride, padding, dilation, pad_value, groups)


__all__ = [
    "int8_conv2d_direct",
    "int8_conv2d_direct_requant",
    "int8_conv2d_igemm",
    "int8_conv2d_igemm_requant",
]
