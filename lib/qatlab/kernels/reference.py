"""CPU reference twins of the CUDA kernels: exact integer arithmetic (int64 matmul).

Each twin takes and returns the same things as its CUDA kernel (numpy in, numpy out)
and is the ground truth the GPU tests compare against, bit for bit:

* ``int8_gemm_ref``          A int8 [M, K] . B int8 [N, K]^T -> int32 [M, N]
* ``int8_gemm_requant_ref``  the fused epilogue: requantize(acc + bias, M, zp, qmin, qmax)
  with ``qatlab.quant.requantize(..., mode="float")`` (float64 product, round half even)

The products are summed in int64 and then narrowed to int32 with wrap-around, which is
what the tensor-core (and dp4a) int32 accumulators do if a sum ever overflows; for
int8 operands that needs K > 2^31 / 2^14 = 131072, so in practice the narrowing is
exact. ``acc + bias`` wraps in int32 the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from qatlab.quant import requantize

from .validate import check_gemm_operands, check_requant_params


def _gemm_i64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # numpy's integer matmul has no BLAS path but is exact; int64 cannot overflow for
    # any K below 2^63 / 2^14.
    return a.astype(np.int64) @ b.astype(np.int64).T


def _wrap_i32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.int64).astype(np.int32)  # two's-complement wrap, as the GPU


def int8_gemm_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a [M, K] int8 @ b [N, K] int8 ^T`` -> int32 [M, N], exact (int64 inside)."""
    a, b = check_gemm_operands(a, b)
    return _wrap_i32(_gemm_i64(a, b))


def int8_gemm_requant_ref(
    a: np.ndarray,
    b: np.ndarray,
    bias: np.ndarray,
    multiplier: np.ndarray,
    zero_point: int | np.ndarray,
    qmin: int,
    qmax: int,
) -> np.ndarray:
    """Fused GEMM + bias + per-channel float requantization -> int8 (or uint8) codes.

    Output dtype: int8 when [qmin, qmax] fits int8, uint8 when it fits [0, 255].
    """
    a, b = check_gemm_operands(a, b)
    params = check_requant_params(bias, multiplier, zero_point, qmin, qmax, b.shape[0])
    return requant_epilogue(_wrap_i32(_gemm_i64(a, b)), *params, qmin, qmax)


def requant_epilogue(
    acc: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, zp: np.ndarray, out_dtype: np.dtype, qmin: int, qmax: int
) -> np.ndarray:
    """What every kernel's fused epilogue (qatlab_epilogue.cuh) does to int32 accumulators
    ``acc [..., N]``: ``+ bias`` (int32 wrap), ``x multiplier`` in float64, round half to
    even, ``+ zp``, clamp to [qmin, qmax]; per channel along the last axis.

    The parameters are the output of ``validate.check_requant_params`` (already checked).
    """
    acc = _wrap_i32(acc.astype(np.int64) + bias.astype(np.int64))
    y = requantize(
        torch.from_numpy(acc.astype(np.int64)),
        torch.from_numpy(multiplier),
        torch.from_numpy(zp.astype(np.int64)),
        qmin,
        qmax,
        mode="float",
    )
    return y.numpy().astype(out_dtype)
