"""Kernel registry: look a kernel up by name and backend ("cpu" or "cuda").

Names (every one exists on both backends; on ``cpu`` each maps to its reference twin):

=============================  ======================================================
``int8_gemm``                  A int8 [M, K] . B int8 [N, K]^T -> int32 [M, N]
                               (cuda: tensor-core mma kernel)
``int8_gemm_requant``          same + int32 bias, x float64 multiplier, round half
                               even, + zero point, saturate -> int8/uint8 codes
                               (fused epilogue)
``int8_gemm_dp4a``             the __dp4a implementation of ``int8_gemm``
``int8_gemm_dp4a_requant``     the __dp4a implementation of ``int8_gemm_requant``
``int8_conv2d``                x int8 NHWC [N, H, W, C] (*) w int8 KRSC [K, R, S, C]
                               -> int32 NHWC [N, OH, OW, K]; stride, padding,
                               dilation, pad_value (the int8 code padded taps
                               read), groups=1 (cuda: implicit GEMM, tensor cores)
``int8_conv2d_requant``        same + the fused epilogue of ``int8_gemm_requant``
``int8_conv2d_direct``         the direct (__dp4a, tiled) ``int8_conv2d``
``int8_conv2d_direct_requant`` the direct ``int8_conv2d_requant``
=============================  ======================================================

Call signatures: ``int8_conv2d(x, w, stride=1, padding=0, dilation=1, pad_value=0,
groups=1)`` and ``int8_conv2d_requant(x, w, bias, multiplier, zero_point, qmin, qmax,
stride=1, padding=0, dilation=1, pad_value=0, groups=1)``; see conv_reference.py for
zero points.
"""

from __future__ import annotations

from typing import Any, Callable

from . import conv_reference, reference
from .errors import UnknownKernelError

BACKENDS: tuple[str, ...] = ("cpu", "cuda")

_CPU: dict[str, Callable[..., Any]] = {
    "int8_gemm": reference.int8_gemm_ref,
    "int8_gemm_requant": reference.int8_gemm_requant_ref,
    "int8_gemm_dp4a": reference.int8_gemm_ref,
    "int8_gemm_dp4a_requant": reference.int8_gemm_requant_ref,
    "int8_conv2d": conv_reference.int8_conv2d_ref,
    "int8_conv2d_requant": conv_reference.int8_conv2d_requant_ref,
    "int8_conv2d_direct": conv_reference.int8_conv2d_ref,
    "int8_conv2d_direct_requant": conv_reference.int8_conv2d_requant_ref,
}

# (module, attribute) of the launchers; resolved lazily so importing the registry never
# imports CuPy.
_CUDA: dict[str, tuple[str, str]] = {
    "int8_gemm": ("cupy_backend", "int8_gemm_mma"),
    "int8_gemm_requant": ("cupy_backend", "int8_gemm_mma_requant"),
    "int8_gemm_dp4a": ("cupy_backend", "int8_gemm_dp4a"),
    "int8_gemm_dp4a_requant": ("cupy_backend", "int8_gemm_dp4a_requant"),
    "int8_conv2d": ("cupy_conv", "int8_conv2d_igemm"),
    "int8_conv2d_requant": ("cupy_conv", "int8_conv2d_igemm_requant"),
    "int8_conv2d_direct": ("cupy_conv", "int8_conv2d_direct"),
    "int8_conv2d_direct_requant": ("cupy_conv", "int8_conv2d_direct_requant"),
}


def kernel_names() -> list[str]:
    return sorted(_CPU)


def get_kernel(name: str, backend: str = "cpu") -> Callable[..., Any]:
    """The callable implementing kernel ``name`` on ``backend``.

    Getting a ``cuda`` kernel does not need CuPy yet; calling it does, and raises
    :class:`~qatlab.kernels.errors.CupyUnavailableError` naming what to install.
    """
    if backend not in BACKENDS:
        raise UnknownKernelError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if name not in _CPU:
        raise UnknownKernelError(f"unknown kernel {name!r}; known: {', '.join(kernel_names())}")
    if backend == "cpu":
        return _CPU[name]
    import importlib

    module, attr = _CUDA[name]
    return getattr(importlib.import_module(f".{module}", __package__), attr)


def cuda_available() -> bool:
    """True when CuPy imports and sees a CUDA device (never raises)."""
    from . import cupy_backend
    from .errors import CupyUnavailableError

    try:
        cupy_backend.import_cupy()
    except CupyUnavailableError:
        return False
    return True
