"""CPU reference twins of the int8 convolution kernels: exact integer arithmetic.

Layouts are the CUDA kernels' own: activations NHWC ``x [N, H, W, C]``, weights KRSC
``w [K, R, S, C]`` (out, kh, kw, in), outputs NHWC ``[N, OH, OW, K]``. Both CUDA
kernels (``int8_conv2d`` implicit GEMM, ``int8_conv2d_direct``) share these twins.

Padding and zero points
-----------------------
The kernels multiply int8 codes as they are; a padded (out-of-image) tap contributes
the int8 code ``pad_value`` (not 0), so padding can stand for a real 0 of an affine
activation whose zero point is not 0. The exact route for codes ``q`` with zero point
``z`` (what the IntModel needs, ``Σ w·(q − z)`` with padded taps at ``q = z``):

1. pick an offset ``o`` that moves the codes into int8: ``o = 128`` for uint8 codes
   (``qmin >= 0``), ``o = 0`` for int8 codes; pass ``x = q − o`` (int8);
2. pass ``pad_value = z − o`` (the real 0, in offset codes; within [-128, 127]);
3. the kernel then returns ``Σ w·(q − o) = Σ w·(q − z) + (z − o)·Σ w`` per output
   channel: add ``(o − z)·Σ_{r,s,c} w[k]`` (:func:`input_zero_point_correction`) to the
   int32 bias, which the fused epilogue adds before requantizing.

This is the offset trick of ``intmodel.reference._matmul_layer``; the correction does
not depend on the output pixel precisely because padded taps hold ``z`` too.

Sums are formed in int64 and narrowed to int32 with wrap-around, as the GPU's int32
accumulators would (reachable only for R·S·C > 2^17, i.e. never for real layers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .reference import _wrap_i32, requant_epilogue
from .validate import ConvGeometry, check_conv_operands, check_requant_params

IntPair = int | tuple[int, int]


def _conv_i64(x: np.ndarray, w: np.ndarray, g: ConvGeometry, pad_value: int) -> np.ndarray:
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    xp = np.pad(x.astype(np.int64), ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    w64 = w.astype(np.int64)
    acc = np.zeros(g.out_shape, np.int64)
    # one strided window per filter tap: [N, OH, OW, C] @ [C, K]; int64 cannot overflow
    for r in range(g.r):
        for s in range(g.s):
            win = xp[:, r * dh : r * dh + (g.oh - 1) * sh + 1 : sh, s * dw : s * dw + (g.ow - 1) * sw + 1 : sw, :]
            acc += win @ w64[:, r, s, :].T
    return acc


def int8_conv2d_ref(
    x: np.ndarray,
    w: np.ndarray,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    pad_value: int = 0,
    groups: int = 1,
) -> np.ndarray:
    """``x [N, H, W, C] int8`` (*) ``w [K, R, S, C] int8`` -> int32 ``[N, OH, OW, K]``.

    Cross-correlation as torch's conv2d: ``OH = (H + 2·ph − dh·(R − 1) − 1) // sh + 1``;
    padded taps read ``pad_value`` (see the module docstring for zero points).
    """
    g = check_conv_operands(x, w, stride, padding, dilation, groups, pad_value)
    return _wrap_i32(_conv_i64(x, w, g, int(pad_value)))


def int8_conv2d_requant_ref(
    x: np.ndarray,
    w: np.ndarray,
    bias: Any,
    multiplier: Any,
    zero_point: int | Any,
    qmin: int,
    qmax: int,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    pad_value: int = 0,
    groups: int = 1,
) -> np.ndarray:
    """Convolution + the fused epilogue: ``requant(acc + bias[k]) · multiplier[k] + zero_point``,
    round half to even, clamp [qmin, qmax] -> int8 (or uint8) codes ``[N, OH, OW, K]``."""
    g = check_conv_operands(x, w, stride, padding, dilation, groups, pad_value)
    params = check_requant_params(bias, multiplier, zero_point, qmin, qmax, g.k)
    return requant_epilogue(_wrap_i32(_conv_i64(x, w, g, int(pad_value))), *params, qmin, qmax)


def input_zero_point_correction(w: np.ndarray, zero_point: int, offset: int) -> np.ndarray:
    """``(offset − zero_point)·Σ_{r,s,c} w[k]`` as int64 ``[K]``: add it to the bias when the
    kernel ran on ``x = q − offset`` with ``pad_value = zero_point − offset``."""
    w = np.asarray(w)
    return (int(offset) - int(zero_point)) * w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)


__all__ = ["int8_conv2d_ref", "int8_conv2d_requant_ref", "input_zero_point_correction"]
