"""Autograd functions over the fused kernels: one pass forward, one pass backward per tensor.

* :func:`fake_quant_fused`: affine fake quantization per tensor or per channel (any
  axis), with the clipped STE for ``x`` and, when the scale and zero point require
  gradients, LSQ / LSQ+'s step-size and zero-point gradients computed in the same
  pass (``ds = g·Σ(dy·y − dx·x)/s``, ``dz = −g·s·Σ(dy − dx)``). With ``scale_floor``
  the scale is a raw learned parameter, used as ``max(|scale|, scale_floor)`` (and its
  gradient taken through that), which spares a quantizer four small autograd ops.
* :func:`pact_fake_quant_fused`: PACT's clip-and-quantize with the gradients of
  :func:`qatlab.nn.ste.pact_fake_quant`.

Values and ``dx`` equal the torch-op paths (:mod:`qatlab.nn.ste`,
``FakeQuant``'s PACT path) bit for bit; the reductions are summed in double, so the
scale, zero-point and clip gradients differ from torch's float32 sums only by
float32's rounding of those sums. Forward saves only ``x``: the backward recomputes
the rounding, which costs less than storing and reloading a mask and the output.

Callers check :func:`fusable` first; the kernels take float32 CPU tensors.
"""

from __future__ import annotations

import ctypes
import math
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

from .build import library

_P, _I, _F, _D, _N = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_double, ctypes.c_int
_SIGNATURES = {
    "qatlab_fq_forward": [_P, _P, _I, _I, _I, _P, _P, _N, _F, _F, _F, _F, _F, _N],
    "qatlab_fq_backward": [_P, _P, _P, _I, _I, _I, _P, _P, _N, _F, _F, _F, _F, _F, _D, _P, _P, _N],
    "qatlab_pact_forward": [_P, _P, _I, _P, _F, _F, _F, _N],
    "qatlab_pact_backward": [_P, _P, _P, _I, _P, _F, _F, _P, _N],
}

_local = threading.local()


def _kernels() -> ctypes.CDLL | None:
    lib = library()
    if lib is not None and not getattr(lib, "_qatlab_typed", False):
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, None
        lib._qatlab_typed = True
    return lib


def enabled() -> bool:
    """Whether the fused path is in use here (kernels available, not switched off)."""
    return getattr(_local, "on", True) and _kernels() is not None


@contextmanager
def fused_disabled() -> Iterator[None]:
    """Run the block on the torch-op path (this thread only): the reference side of a comparison."""
    prev = getattr(_local, "on", True)
    _local.on = False
    try:
        yield
    finally:
        _local.on = prev


def fusable(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether :func:`fake_quant_fused` / :func:`pact_fake_quant_fused` take these tensors."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() == 0:
        return False
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        return False
    return enabled()


def _grid(shape: torch.Size, axis: int | None) -> tuple[int, int, int]:
    if axis is None:
        return 1, 1, shape.numel()
    outer = 1
    for d in shape[:axis]:
        outer *= d
    inner = 1
    for d in shape[axis + 1 :]:
        inner *= d
    return outer, shape[axis], inner


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


Bounds = tuple[float | None, float | None]


def _clip_bounds(clamp: Bounds | None) -> tuple[float, float]:
    if clamp is None:
        return -math.inf, math.inf
    lo, hi = clamp
    return (-math.inf if lo is None else float(lo)), (math.inf if hi is None else float(hi))


class _FusedFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis, grad_factor, scale_floor, clo, chi):  # type: ignore[override]
        lib = _kernels()
        xc = x.detach().contiguous()
        s = scale.detach().contiguous()
        z = zero_point.detach().contiguous()
        outer, channels, inner = _grid(xc.shape, axis)
        y = torch.empty_like(xc)
        floor = scale_floor or 0.0
        lib.qatlab_fq_forward(
            xc.data_ptr(),
            y.data_ptr(),
            outer,
            channels,
            inner,
            s.data_ptr(),
            z.data_ptr(),
            int(z.numel() > 1),
            qmin,
            qmax,
            floor,
            clo,
            chi,
            torch.get_num_threads(),
        )
        ctx.save_for_backward(x, s, z)
        ctx.meta = (outer, channels, inner, qmin, qmax, floor, clo, chi, grad_factor, scale.shape, zero_point.shape)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        lib = _kernels()
        x, s, z = ctx.saved_tensors
        outer, channels, inner, qmin, qmax, floor, clo, chi, g, s_shape, z_shape = ctx.meta
        xc, dyc = x.detach().contiguous(), dy.contiguous()
        dx = torch.empty_like(xc)
        ds = torch.empty(channels, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        dz = torch.empty(z.numel(), dtype=torch.float32) if ctx.needs_input_grad[2] else None
        lib.qatlab_fq_backward(
            xc.data_ptr(),
            dyc.data_ptr(),
            dx.data_ptr(),
            outer,
            channels,
            inner,
            s.data_ptr(),
            z.data_ptr(),
            int(z.numel() > 1),
            qmin,
            qmax,
            floor,
            clo,
            chi,
            g,
            _ptr(ds),
            _ptr(dz),
            torch.get_num_threads(),
        )
        return (
            dx if ctx.needs_input_grad[0] else None,
            None if ds is None else ds.reshape(s_shape),
            None if dz is None else dz.reshape(z_shape),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def fake_quant_fused(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    grad_factor: float = 1.0,
    scale_floor: float | None = None,
    clamp: Bounds | None = None,
) -> torch.Tensor:
    """Fake-quantize ``x`` (float32, CPU) with one scale per tensor or per ``axis`` channel.

    ``zero_point`` is a float tensor, rounded and clamped to [qmin, qmax] as LSQ+ does;
    one per channel, or one for the tensor. Gradients flow to whichever of ``x``,
    ``scale`` and ``zero_point`` require them (LSQ's, scaled by ``grad_factor``).
    ``scale_floor``: ``scale`` is a raw learned parameter used as ``max(|scale|, floor)``.
    ``clamp``: (lo, hi), either None for an open end: quantize ``x.clamp(lo, hi)`` instead,
    the clamp's gradient included (a ReLU6 in front of the quantizer costs no extra pass).
    """
    channels = 1 if axis is None else x.shape[axis]
    if scale.numel() != channels:
        raise ValueError(f"scale has {scale.numel()} values; expected {channels} for axis {axis} of a tensor of shape {tuple(x.shape)}")
    if zero_point.numel() not in (1, channels) or (zero_point.numel() == 1 and channels > 1 and zero_point.requires_grad):
        raise ValueError(f"zero_point has {zero_point.numel()} values; expected 1 or {channels} (one per channel when learned)")
    if not 1 <= qmax - qmin < 2**24:
        raise ValueError(f"qmin {qmin}, qmax {qmax}: need qmin < qmax with fewer than 2**24 codes (float32 holds them exactly)")
    clo, chi = _clip_bounds(clamp)
    return _FusedFakeQuant.apply(x, scale, zero_point, float(qmin), float(qmax), axis, float(grad_factor), scale_floor, clo, chi)


class _FusedPACT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, qmax, clo, chi):  # type: ignore[override]
        lib = _kernels()
        xc = x.detach().contiguous()
        a = alpha.detach().reshape(1).contiguous()
        y = torch.empty_like(xc)
        lib.qatlab_pact_forward(xc.data_ptr(), y.data_ptr(), xc.numel(), a.data_ptr(), qmax, clo, chi, torch.get_num_threads())
        ctx.save_for_backward(x, a)
        ctx.bounds = (clo, chi)
        ctx.alpha_shape = alpha.shape
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        lib = _kernels()
        x, a = ctx.saved_tensors
        xc, dyc = x.detach().contiguous(), dy.contiguous()
        dx = torch.empty_like(xc)
        da = torch.empty(1, dtype=torch.float32)
        clo, chi = ctx.bounds
        lib.qatlab_pact_backward(
            xc.data_ptr(), dyc.data_ptr(), dx.data_ptr(), xc.numel(), a.data_ptr(), clo, chi, da.data_ptr(), torch.get_num_threads()
        )
        return (
            (dx if ctx.needs_input_grad[0] else None),
            (da.reshape(ctx.alpha_shape) if ctx.needs_input_grad[1] else None),
            None,
            None,
            None,
        )


def pact_fake_quant_fused(x: torch.Tensor, alpha: torch.Tensor, bits: int, clamp: Bounds | None = None) -> torch.Tensor:
    """PACT (clip ``x`` to [0, α], quantize unsigned on ``bits``) in one pass each way;
    ``clamp`` as in :func:`fake_quant_fused`."""
    if alpha.numel() != 1:
        raise ValueError(f"alpha must hold one value, got {alpha.numel()}")
    clo, chi = _clip_bounds(clamp)
    return _FusedPACT.apply(x, alpha, float(2**bits - 1), clo, chi)
