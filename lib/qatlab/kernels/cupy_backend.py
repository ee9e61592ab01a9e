"""CUDA backend: the raw .cu kernels of this package, compiled by CuPy's RawModule.

CuPy is imported lazily (first call), so importing ``qatlab.kernels`` never needs it;
without CuPy or without a device, :class:`CupyUnavailableError` says what to install.

Operands may be CuPy arrays, CUDA torch tensors (via ``__cuda_array_interface__``, no
copy) or host numpy arrays (copied to the device and the result copied back); the
result has the kind of the ``a`` operand.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CupyUnavailableError, KernelInputError
from .validate import check_gemm_operands, check_requant_params, output_dtype

KERNEL_DIR = Path(__file__).resolve().parent
SOURCES = {"mma": "int8_gemm_mma.cu", "dp4a": "int8_gemm_dp4a.cu"}
EPILOGUE_HEADER = "qatlab_epilogue.cuh"

# Must match the #defines of qatlab_mma_tile.cuh (the tiling of int8_gemm_mma.cu and
# int8_conv2d_igemm.cu).
MMA_BM, MMA_BN, MMA_BK, MMA_LDS, MMA_THREADS = 128, 128, 64, 80, 256
MMA_STAGES = 3
MMA_GROUP_M = 8
DP4A_TILE = 16
K_ALIGN = 16  # cp.async copies 16-byte chunks: rows must start 16-byte aligned


def mma_smem_bytes(stages: int = MMA_STAGES) -> int:
    return stages * (MMA_BM + MMA_BN) * MMA_LDS


def import_cupy() -> Any:
    """Import CuPy and check a device is visible, or raise CupyUnavailableError."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        raise CupyUnavailableError(f"CuPy could not be imported ({type(e).__name__}: {e})") from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise CupyUnavailableError(f"no CUDA device is usable ({type(e).__name__}: {e})") from e
    if n < 1:
        raise CupyUnavailableError("no CUDA device is visible")
    return cupy


def source_with_headers(filename: str) -> str:
    """The text of a .cu file of this package with its own ``qatlab_*.cuh`` headers pasted
    in place of their #include lines.

    CuPy keys its on-disk kernel cache on the source text and options; an #include
    would let an edited header hit a stale cached binary, so headers are inlined.
    """
    src = (KERNEL_DIR / filename).read_text()
    for inc in re.findall(r'^#include "(qatlab_[a-z0-9_]+\.cuh)"$', src, flags=re.M):
        header = (KERNEL_DIR / inc).read_text().replace("#pragma once", "")
        src = src.replace(f'#include "{inc}"', header)
    assert '#include "' not in src, f"{filename} includes a header source_with_headers does not inline"
    return src


def kernel_source(variant: str) -> str:
    """The GEMM .cu text of ``variant`` (a key of SOURCES) exactly as CuPy compiles it."""
    src = source_with_headers(SOURCES[variant])
    assert "qatlab_requant" in src, f"{SOURCES[variant]} no longer includes {EPILOGUE_HEADER}"
    return src


def allow_large_smem(cupy: Any, fn: Any, nbytes: int) -> None:
    """Opt a kernel in to ``nbytes`` of dynamic shared memory (needed above 48 KiB)."""
    attr = getattr(cupy.cuda.driver, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", 8)
    cupy.cuda.driver.funcSetAttribute(fn.ptr, attr, nbytes)


@functools.lru_cache(maxsize=None)
def _module(variant: str, device_id: int) -> Any:
    """Compile (NVRTC, cached by CuPy on disk too) one .cu file for the current device."""
    cupy = import_cupy()
    src = kernel_source(variant)
    options = ("-std=c++17", f"-DSTAGES={MMA_STAGES}")
    mod = cupy.RawModule(code=src, options=options)
    if variant == "mma":
        cc = int(cupy.cuda.Device(device_id).compute_capability)
        if cc < 80:
            raise KernelInputError(f"the mma kernel needs sm_80 or newer (this device is sm_{cc}); use 'int8_gemm_dp4a'")
        for name in ("int8_gemm_mma_s32", "int8_gemm_mma_requant"):
            allow_large_smem(cupy, mod.get_function(name), mma_smem_bytes())
    return mod


def _function(variant: str, fused: bool) -> Any:
    cupy = import_cupy()
    dev = cupy.cuda.Device().id
    name = f"int8_gemm_{variant}_{'requant' if fused else 's32'}"
    return _module(variant, dev).get_function(name)


def _as_device(cupy: Any, x: Any) -> tuple[Any, str]:
    """(CuPy view or copy of x, kind) where kind in {'cupy', 'torch', 'numpy'}."""
    if isinstance(x, cupy.ndarray):
        return x, "cupy"
    mod = type(x).__module__
    if mod.startswith("torch"):
        if x.device.type != "cuda":
            return cupy.asarray(x.detach().numpy()), "numpy"
        return cupy.asarray(x), "torch"  # zero-copy via __cuda_array_interface__
    if isinstance(x, np.ndarray):
        return cupy.asarray(x), "numpy"
    raise KernelInputError(f"unsupported operand type {type(x).__name__}; pass a CuPy array, torch tensor or numpy array")


def _check_host_kind(x: Any, ndim: int = 2) -> Any:
    """Validate dtype/layout on the caller's own object, before any copy."""
    if type(x).__module__.startswith("torch"):
        import torch

        if x.dtype != torch.int8:
            raise KernelInputError(f"operands must have dtype int8, got {x.dtype}")
        if x.dim() != ndim:
            raise KernelInputError(f"operands must be {ndim}-D, got shape {tuple(x.shape)}")
        if not x.is_contiguous():
            raise KernelInputError("operands must be C-contiguous (row-major); call .contiguous() first")
    return x


def _back(cupy: Any, y: Any, kind: str) -> Any:
    if kind == "cupy":
        return y
    if kind == "torch":
        import torch

        return torch.from_dlpack(y)
    return cupy.asnumpy(y)


def _pad_k(cupy: Any, x: Any) -> Any:
    """Zero-pad K up to a multiple of 16 (zeros add nothing to the dot products)."""
    m, k = x.shape
    kp = -(-k // K_ALIGN) * K_ALIGN
    if kp == k and x.data.ptr % 16 == 0:
        return x
    out = cupy.zeros((m, kp), dtype=cupy.int8)
    out[:, :k] = x
    return out


def _launch(variant: str, a: Any, b: Any, epilogue: tuple | None) -> Any:
    _check_host_kind(a)
    _check_host_kind(b)
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        check_gemm_operands(a, b)  # host operands: report bad input even without CuPy
    cupy = import_cupy()
    da, kind = _as_device(cupy, a)
    db, _ = _as_device(cupy, b)
    check_gemm_operands(da, db)  # dtype, 2-D, contiguity, K, empty dims: before launch
    m, n = int(da.shape[0]), int(db.shape[0])
    da, db = _pad_k(cupy, da), _pad_k(cupy, db)
    k = int(da.shape[1])
    if variant == "mma":
        grid, block, smem = ((m + MMA_BM - 1) // MMA_BM, (n + MMA_BN - 1) // MMA_BN), (MMA_THREADS,), mma_smem_bytes()
    else:
        grid, block, smem = ((n + DP4A_TILE - 1) // DP4A_TILE, (m + DP4A_TILE - 1) // DP4A_TILE), (DP4A_TILE, DP4A_TILE), 0
    if grid[1] > 65535:
        raise KernelInputError(f"grid dimension y = {grid[1]} exceeds 65535; shape M={m}, N={n} too large")
    return launch_s32_or_requant(
        cupy,
        lambda fused: _function(variant, fused),
        grid,
        block,
        smem,
        (da, db),
        (np.int32(m), np.int32(n), np.int32(k)),
        (m, n),
        n,
        epilogue,
        kind,
    )


def launch_s32_or_requant(
    cupy: Any,
    function: Callable[[bool], Any],
    grid: tuple,
    block: tuple,
    smem: int,
    operands: tuple,
    scalars: tuple,
    out_shape: tuple,
    n: int,
    epilogue: tuple | None,
    kind: str,
) -> Any:
    """Run the int32 kernel (``epilogue`` None) on ``(*operands, y, *scalars)``, or the
    fused-requant one on ``(*operands, bias, mult, zp, y, *scalars, qmin, qmax)`` with
    ``epilogue = (bias, multiplier, zero_point, qmin, qmax)`` for ``n`` output channels;
    ``function(fused)`` gives the kernel. Returns ``y`` [out_shape] as ``kind`` (_back)."""
    if epilogue is None:
        y = cupy.empty(out_shape, dtype=cupy.int32)
        function(False)(grid, block, (*operands, y, *scalars), shared_mem=smem)
        return _back(cupy, y, kind)
    dbias, dmult, dzp, out = _device_epilogue(cupy, n, *epilogue)
    qmin, qmax = epilogue[3], epilogue[4]
    y = cupy.empty(out_shape, dtype=cupy.int8)
    args = (*operands, dbias, dmult, dzp, y, *scalars, np.int32(qmin), np.int32(qmax))
    function(True)(grid, block, args, shared_mem=smem)
    if out == np.uint8:
        y = y.view(cupy.uint8)  # the kernel stores the low byte; [0, 255] codes
    return _back(cupy, y, kind)


def _is_device(cupy: Any, x: Any) -> bool:
    return isinstance(x, cupy.ndarray) or (type(x).__module__.startswith("torch") and x.device.type == "cuda")


def _device_epilogue(cupy: Any, n: int, bias: Any, mult: Any, zp: Any, qmin: int, qmax: int) -> tuple[Any, Any, Any, np.dtype]:
    """Epilogue vectors on the device as (int32 bias, float64 mult, int32 zp, out dtype).

    Host values get the full check (ranges, finiteness). Device vectors are checked
    for shape and dtype only: checking their values would cost a device->host copy
    and a sync on every call.
    """
    if not (_is_device(cupy, bias) or _is_device(cupy, mult) or _is_device(cupy, zp)):
        hb, hm, hz, out = check_requant_params(bias, mult, zp, qmin, qmax, n)
        return cupy.asarray(hb), cupy.asarray(hm), cupy.asarray(hz), out
    out = output_dtype(int(qmin), int(qmax))
    dbias, dmult = cupy.asarray(bias), cupy.asarray(mult)
    if dbias.shape != (n,) or dbias.dtype.kind not in "iu":
        raise KernelInputError(f"bias must be an integer (int32) vector of shape [{n}], got {dbias.dtype} {dbias.shape}")
    if dmult.shape != (n,) or dmult.dtype.kind != "f":
        raise KernelInputError(f"multiplier must be a float64 vector of shape [{n}], got {dmult.dtype} {dmult.shape}")
    if isinstance(zp, (int, np.integer)):
        dzp = cupy.full((n,), int(zp), dtype=cupy.int32)
    else:
        dzp = cupy.asarray(zp)
        if dzp.shape != (n,) or dzp.dtype.kind not in "iu":
            raise KernelInputError(f"zero_point must be an int or an integer vector of shape [{n}]")
    return (
        cupy.ascontiguousarray(dbias.astype(cupy.int32, copy=False)),
        cupy.ascontiguousarray(dmult.astype(cupy.float64, copy=False)),
        cupy.ascontiguousarray(dzp.astype(cupy.int32, copy=False)),
        out,
    )


def int8_gemm_mma(a: Any, b: Any) -> Any:
    """Tensor-core int8 GEMM: ``a [M, K] @ b [N, K]^T`` -> int32 [M, N]."""
    return _launch("mma", a, b, None)


def int8_gemm_mma_requant(a: Any, b: Any, bias: Any, multiplier: Any, zero_point: Any, qmin: int, qmax: int) -> Any:
    """Tensor-core GEMM with the fused bias + float requantization epilogue -> 8-bit codes."""
    return _launch("mma", a, b, (bias, multiplier, zero_point, qmin, qmax))


def int8_gemm_dp4a(a: Any, b: Any) -> Any:
    """``__dp4a`` int8 GEMM: ``a [M, K] @ b [N, K]^T`` -> int32 [M, N]."""
    return _launch("dp4a", a, b, None)


def int8_gemm_dp4a_requant(a: Any, b: Any, bias: Any, multiplier: Any, zero_point: Any, qmin: int, qmax: int) -> Any:
    """``__dp4a`` GEMM with the fused epilogue -> 8-bit codes."""
    return _launch("dp4a", a, b, (bias, multiplier, zero_point, qmin, qmax))


__all__ = [
    "import_cupy",
    "int8_gemm_mma",
    "int8_gemm_mma_requant",
    "int8_gemm_dp4a",
    "int8_gemm_dp4a_requant",
    "output_dtype",
]
