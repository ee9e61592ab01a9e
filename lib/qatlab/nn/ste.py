"""Straight-through estimators: fake quantization with the gradients QAT needs.

Kinds (``STE_KINDS``):

* ``identity``: gradient 1 everywhere (round and clamp both ignored).
* ``clipped``:  gradient 1 inside the clip range, 0 outside (torch's native fake-quant).
* ``lsq``:      learned step size (Esser et al., ICLR 2020): the scale is a parameter
                whose gradient is scaled by ``g = 1/sqrt(numel · qmax)``; with an
                asymmetric range the zero point is learned too (LSQ+, Bhalgat et al. 2020).
* ``pact``:     learned activation clip α (Choi et al. 2018): ``y = clamp(x, 0, α)``
                quantized on ``[0, α]``; ``∂y/∂α = 1`` where ``x ≥ α``.

Each fused (native) path has a plain reference built from ``round_ste`` and
``grad_scale``, and the tests compare values and gradients.
"""

from __future__ import annotations

import math

import torch

STE_KINDS = ("identity", "clipped", "lsq", "pact")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round half to even forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Value of ``x``, gradient multiplied by ``g``."""
    return (x - x * g).detach() + x * g


def lsq_grad_factor(numel_per_scale: int, qmax: int) -> float:
    """LSQ's gradient scale ``1/sqrt(N · Q_P)`` (N values share one scale)."""
    return 1.0 / math.sqrt(max(1, numel_per_scale) * max(1, qmax))


def _broadcast(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None:
        return p.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


class _IdentitySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis):  # type: ignore[override]
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g, None, None, None, None, None


def fake_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    ste: str = "clipped",
) -> torch.Tensor:
    """Fake quantization with fixed qparams (per tensor, or per channel along ``axis``)."""
    scale = scale.detach().float()
    zero_point = zero_point.detach().to(torch.int32)
    if ste == "identity":
        return _IdentitySTE.apply(x, scale, zero_point, qmin, qmax, axis)
    if ste == "clipped":
        if axis is None and x.device.type == "cpu":
            # torch's kernel, vectorised (values bit-identical; only dx is computed).
            return _LSQPerTensorCPU.apply(x, scale.reshape(1), zero_point.reshape(1).float(), qmin, qmax, 1.0)
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero_point.reshape(()), qmin, qmax)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)
    raise ValueError(f"ste {ste!r} takes learned parameters; use lsq_fake_quant or pact_fake_quant")


def _round_clamp_scale(x: torch.Tensor, s: torch.Tensor, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``clamp(round(x·(1/s)), lo, hi)·s`` (torch's fake-quant arithmetic, bit for bit) and
    the in-range mask, as float 0/1: a bool mask is ~5x slower to make and to multiply by."""
    t = x.detach() * (torch.tensor(1.0, dtype=torch.float32) / s)
    t.round_()
    c = t.clamp(lo, hi)
    mask = c.sub(t).eq_(0)
    return c.mul_(s), mask


class _LSQPerTensorCPU(torch.autograd.Function):
    """Per-tensor LSQ/LSQ+ from vectorised torch ops (torch's CPU learnable kernel is
    scalar code and was the largest QAT overhead of the default CNN's training step).

    Forward: ``y = clamp(round(x·(1/s)), qmin − z, qmax − z) · s`` with ``z`` the
    rounded, clamped zero point: bit-identical to torch's kernel, which computes
    ``(clamp(round(x·(1/s)) + z, qmin, qmax) − z) · s`` in exact float integers.
    Backward, with ``m`` the in-range mask and ``g`` the gradient scale: ``dx = dy·m``;
    per element ``∂y/∂s`` is ``(y − x)/s`` in range and ``y/s`` (= qmin−z or qmax−z)
    outside, so ``ds = g·(Σ dy·y − Σ dx·x)/s``; ``∂y/∂z`` is −s outside, so
    ``dz = −g·s·(Σ dy − Σ dx)``: two dot products and two sums, no temporaries.
    The clipped STE uses it too, with fixed qparams (then only ``dx`` is computed).
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, grad_factor):  # type: ignore[override]
        s = scale.detach().float().reshape(())  # 0-dim: in-place ops keep x's shape, even 0-dim
        z = float(torch.round(zero_point.detach().clamp(qmin, qmax)))
        y, mask = _round_clamp_scale(x, s, qmin - z, qmax - z)
        ctx.save_for_backward(x, y, mask, s)
        ctx.grad_factor = grad_factor
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, y, mask, s = ctx.saved_tensors
        g = ctx.grad_factor
        dy = dy.contiguous()
        dx = dy * mask
        flat_dy, flat_dx = dy.reshape(-1), dx.reshape(-1)
        ds = dz = None
        if ctx.needs_input_grad[1]:
            ds = ((torch.dot(flat_dy, y.reshape(-1)) - torch.dot(flat_dx, x.detach().reshape(-1))) * (g / s)).reshape(1)
        if ctx.needs_input_grad[2]:
            dz = ((flat_dy.sum() - flat_dx.sum()) * (-g * s)).reshape(1)
        return (dx if ctx.needs_input_grad[0] else None), ds, dz, None, None, None


class _LSQPerChannelSymCPU(torch.autograd.Function):
    """Per-channel LSQ with a zero offset (symmetric weights), vectorised like
    :class:`_LSQPerTensorCPU`: ``y = clamp(round(x·(1/s_c)), qmin, qmax)·s_c`` and
    ``ds_c = g·Σ_c (dy·y − dx·x)/s_c``. Values and ``dx`` are torch's, bit for bit."""

    @staticmethod
    def forward(ctx, x, scale, axis, qmin, qmax, grad_factor):  # type: ignore[override]
        shape = [1] * x.dim()
        shape[axis] = -1
        s = scale.detach().float().reshape(shape)
        y, mask = _round_clamp_scale(x, s, qmin, qmax)
        ctx.save_for_backward(x, y, mask, s)
        ctx.axis, ctx.grad_factor = axis, grad_factor
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, y, mask, s = ctx.saved_tensors
        dx = dy * mask
        ds = None
        if ctx.needs_input_grad[1]:
            dims = [d for d in range(x.dim()) if d != ctx.axis]
            ds = ((dy * y - dx * x.detach()) / s).sum(dims) * ctx.grad_factor
        return (dx if ctx.needs_input_grad[0] else None), ds, None, None, None, None


def lsq_fake_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """LSQ / LSQ+ via torch's fused learnable fake-quant kernels.

    ``scale`` (and a float ``zero_point``, learned for LSQ+) receive gradients;
    the forward pass rounds and clamps the zero point as the kernels do. Per tensor
    on the CPU (and per channel with a zero offset, as weights are), the vectorised
    functions below compute the same values and gradients in a fraction of the time
    of torch's scalar kernels.
    """
    if axis is None and x.device.type == "cpu":
        return _LSQPerTensorCPU.apply(x, scale.reshape(1), zero_point.reshape(1).float(), qmin, qmax, grad_factor)
    if axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale.reshape(1), zero_point.reshape(1).float(), qmin, qmax, grad_factor)
    if x.device.type == "cpu" and not zero_point.requires_grad and not bool(zero_point.detach().any()):
        return _LSQPerChannelSymCPU.apply(x, scale, axis, qmin, qmax, grad_factor)
    return torch._fake_quantize_learnable_per_channel_affine(x, scale, zero_point.float(), axis, qmin, qmax, grad_factor)


def lsq_fake_quant_reference(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """The paper's formulation, written out: the fused kernel must agree with it."""
    s = _broadcast(grad_scale(scale, grad_factor), x, axis)
    z_rounded = torch.round(zero_point.clamp(qmin, qmax))
    z = _broadcast(grad_scale(zero_point + (z_rounded - zero_point).detach(), grad_factor), x, axis)
    q = torch.clamp(round_ste(x * (1.0 / s)) + z, qmin, qmax)
    return (q - z) * s


def pact_fake_quant(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT: clip to ``[0, α]`` (α learned), quantize unsigned with scale ``α / (2^b − 1)``.

    The quantizer is straight-through, so ``∂/∂α`` is the clip's: 1 where ``x ≥ α``.
    """
    qmax = 2**bits - 1
    a = alpha.reshape(())
    # where, not minimum: at x == α the gradient goes to α alone (minimum splits ties).
    y = torch.where(x < a, torch.relu(x), a)
    s = (a.detach() / qmax).clamp(min=1e-12)
    yq = torch.fake_quantize_per_tensor_affine(y.detach(), s.float(), torch.zeros((), dtype=torch.int32), 0, qmax)
    return y + (yq - y).detach()
