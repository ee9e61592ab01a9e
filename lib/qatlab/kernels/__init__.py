"""int8 GEMM and convolution kernels: raw CUDA (.cu, launched by CuPy's RawModule) and CPU twins.

* ``get_kernel(name, backend)`` — registry, backends ``"cpu"`` and ``"cuda"``
* ``int8_linear(...)`` — GEMM + bias + float requantization, what the IntModel calls
* ``int8_gemm_ref`` / ``int8_gemm_requant_ref`` — exact numpy references
* ``int8_conv2d_ref`` / ``int8_conv2d_requant_ref`` — exact NHWC x KRSC convolution twins;
  ``input_zero_point_correction`` — the bias term that makes a zero point exact

CuPy is imported only when a ``cuda`` kernel is called.
"""

from __future__ import annotations

from .conv_reference import input_zero_point_correction, int8_conv2d_ref, int8_conv2d_requant_ref
from .errors import CupyUnavailableError, KernelError, KernelInputError, UnknownKernelError
from .linear import int8_linear
from .reference import int8_gemm_ref, int8_gemm_requant_ref
from .registry import BACKENDS, cuda_available, get_kernel, kernel_names

__all__ = [
    "BACKENDS",
    "CupyUnavailableError",
    "KernelError",
    "KernelInputError",
    "UnknownKernelError",
    "cuda_available",
    "get_kernel",
    "input_zero_point_correction",
    "int8_conv2d_ref",
    "int8_conv2d_requant_ref",
    "int8_gemm_ref",
    "int8_gemm_requant_ref",
    "int8_linear",
    "kernel_names",
]
