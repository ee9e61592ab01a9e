"""Operand checks shared by every backend: they run before any launch.

They work on anything exposing ``shape``, ``dtype`` and strides the numpy way (numpy
and CuPy arrays) so the CUDA launcher can check device arrays without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import KernelInputError


def _is_c_contiguous(x: Any) -> bool:
    flags = getattr(x, "flags", None)
    if flags is not None:
        return bool(flags.c_contiguous)  # numpy and CuPy both expose it
    return True


def _check_int8_array(name: str, x: Any, ndim: int, layout: str = "") -> None:
    """``x`` is an int8 array of ``ndim`` dimensions, C-contiguous (``layout`` adds to
    the message what that means for it), or KernelInputError naming it ``name``."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise KernelInputError(f"{name} must be an array, got {type(x).__name__}")
    if np.dtype(x.dtype) != np.int8:
        raise KernelInputError(f"{name} must have dtype int8, got {np.dtype(x.dtype)}")
    if len(x.shape) != ndim:
        raise KernelInputError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if not _is_c_contiguous(x):
        raise KernelInputError(f"{name} must be C-contiguous{layout}; call .copy() / ascontiguousarray first")


def check_gemm_operands(a: Any, b: Any) -> tuple[Any, Any]:
    """A [M, K] and B [N, K], both int8, 2-D, C-contiguous, non-empty, same K."""
    for name, x in (("A (activations)", a), ("B (weights)", b)):
        _check_int8_array(name, x, 2, " (row-major)")
    (m, k), (n, k2) = a.shape, b.shape
    if k != k2:
        raise KernelInputError(f"K mismatch: A is [{m}, {k}] but B (weights, [N, K]) is [{n}, {k2}]")
    if m == 0 or n == 0 or k == 0:
        raise KernelInputError(f"empty dimension: M={m}, N={n}, K={k}; every dimension must be >= 1")
    return a, b


def output_dtype(qmin: int, qmax: int) -> np.dtype:
    """int8 when [qmin, qmax] fits int8, uint8 when it fits [0, 255]."""
    if qmin > qmax:
        raise KernelInputError(f"qmin {qmin} > qmax {qmax}")
    if -128 <= qmin and qmax <= 127:
        return np.dtype(np.int8)
    if 0 <= qmin and qmax <= 255:
        return np.dtype(np.uint8)
    raise KernelInputError(f"[qmin, qmax] = [{qmin}, {qmax}] fits neither int8 nor uint8 output codes")


def check_requant_params(
    bias: Any, multiplier: Any, zero_point: Any, qmin: int, qmax: int, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.dtype]:
    """Host-side epilogue parameters as (int32 bias [N], float64 mult [N], int32 zp [N], out dtype).

    Per-channel vectors have N entries; ``zero_point`` may be a scalar (broadcast).
    """
    out = output_dtype(int(qmin), int(qmax))
    bias = np.asarray(_to_host(bias))
    multiplier = np.asarray(_to_host(multiplier))
    if bias.shape != (n,):
        raise KernelInputError(f"bias must have shape [{n}] (one per output channel), got {bias.shape}")
    if not np.issubdtype(bias.dtype, np.integer):
        raise KernelInputError(f"bias must be integer (int32), got {bias.dtype}")
    if bias.size and (int(bias.min()) < -(2**31) or int(bias.max()) > 2**31 - 1):
        raise KernelInputError("bias does not fit int32")
    if multiplier.shape != (n,):
        raise KernelInputError(f"multiplier must have shape [{n}] (one per output channel), got {multiplier.shape}")
    if not np.issubdtype(multiplier.dtype, np.floating):
        raise KernelInputError(f"multiplier must be floating point (float64), got {multiplier.dtype}")
    if not np.all(np.isfinite(multiplier)):
        raise KernelInputError("multiplier must be finite")
    zp = np.asarray(_to_host(zero_point))
    if zp.ndim == 0:
        zp = np.full(n, int(zp), dtype=np.int64)
    if zp.shape != (n,) or not np.issubdtype(zp.dtype, np.integer):
        raise KernelInputError(f"zero_point must be an int or an integer vector of shape [{n}], got {zp.dtype} {zp.shape}")
    return bias.astype(np.int32), multiplier.astype(np.float64), zp.astype(np.int32), out


def _to_host(x: Any) -> Any:
    if hasattr(x, "detach"):  # torch tensor (any device)
        return x.detach().cpu().numpy()
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    return x


# ---- convolution ----------------------------------------------------------------------


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of one NHWC x KRSC convolution and its GEMM view.

    GEMM view (what the implicit-GEMM kernel computes): ``M = n·oh·ow`` rows (output
    pixels), ``N = k`` columns (output channels), reduction ``K = r·s·c`` in (r, s, c)
    order, which is the KRSC weight flattened per output channel.
    """

    n: int
    h: int
    w: int
    c: int
    k: int
    r: int
    s: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    oh: int
    ow: int

    @property
    def gemm_mnk(self) -> tuple[int, int, int]:
        return self.n * self.oh * self.ow, self.k, self.r * self.s * self.c

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return self.n, self.oh, self.ow, self.k


def _pair(v: Any, name: str, minimum: int) -> tuple[int, int]:
    vals = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(vals) != 2 or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in vals):
        raise KernelInputError(f"{name} must be an int or a pair of ints (h, w), got {v!r}")
    if min(vals) < minimum:
        raise KernelInputError(f"{name} must be >= {minimum}, got {v!r}")
    return int(vals[0]), int(vals[1])


def check_conv_operands(
    x: Any, w: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1, pad_value: int = 0
) -> ConvGeometry:
    """x int8 [N, H, W, C] (NHWC) and w int8 [K, R, S, C] (KRSC), C-contiguous, non-empty,
    same C, groups == 1, a positive output size and an int8 ``pad_value``."""
    for name, t in (("x (activations, NHWC)", x), ("w (weights, KRSC)", w)):
        _check_int8_array(name, t, 4)
    if groups != 1:
        raise KernelInputError(
            f"only groups=1 is supported, got groups={groups}; split grouped/depthwise convolutions into per-group calls"
        )
    (n, h, wd, c), (k, r, s, c2) = (tuple(int(d) for d in t.shape) for t in (x, w))
    if c != c2:
        raise KernelInputError(f"channel mismatch: x [N, H, W, C] has C={c} but w [K, R, S, C] has C={c2}")
    if min(n, h, wd, c, k, r, s) == 0:
        raise KernelInputError(f"empty dimension: x {tuple(x.shape)}, w {tuple(w.shape)}; every dimension must be >= 1")
    st, pd, dl = _pair(stride, "stride", 1), _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)
    if not isinstance(pad_value, (int, np.integer)) or isinstance(pad_value, bool) or not -128 <= pad_value <= 127:
        raise KernelInputError(f"pad_value must be an int in [-128, 127] (an int8 activation code), got {pad_value!r}")
    oh = (h + 2 * pd[0] - dl[0] * (r - 1) - 1) // st[0] + 1
    ow = (wd + 2 * pd[1] - dl[1] * (s - 1) - 1) // st[1] + 1
    if oh <= 0 or ow <= 0:
        raise KernelInputError(
            f"output size {oh} x {ow} <= 0: the dilated {r}x{s} filter (dilation {dl}) is larger "
            f"than the padded {h}x{wd} input (padding {pd})"
        )
    return ConvGeometry(n, h, wd, c, k, r, s, st, pd, dl, oh, ow)
