"""Autograd functions over the fused kernels: one pass forward, one pass backward per tensor.

* :func:`fake_quant_fused`: affine fake quantization per tensor or per channel (any
  axis), with the clipped STE for ``x`` and, when the scale and zero point require
  gradients, LSQ / LSQ+'s step-size and zero-point gradients computed in the same
  pass (``ds = g·Σ(dy·y − dx·x)/s``, ``dz = −g·s·Σ(dy − dx)``). With ``scale_floor``
  the scale is a raw learned parameter, used as ``max(|scale|, scale_floor)`` (and its
  gradient taken through that), which spares a quantizer four small autograd ops.
* :func:`pact_fake_quant_fused`: PACT's clip-and-quantize with the gradients of
  :func:`qatlab.nn.ste.pact_fake_quant`.
* :func:`observe_fake_quant_fused`: an observed quantizer's whole step: the range
  (per-row min/max, a search estimator's tracked fractions, the running min/max or EMA
  state), ``qparams_from_range``'s scale and zero point, and the clipped-STE fake
  quantization, in one call with no host round trip; state and qparams bit for bit
  those of ``FakeQuant._observe`` and :func:`qatlab.quant.qparams_from_range`.
* :func:`mse_search_fused`: the ``mse`` estimator's grid search of clip ranges, every
  candidate evaluated in one pass over the rows (on long rows, only the candidates that
  error bounds from a histogram pass leave in the running).

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
from typing import Iterator, NamedTuple

import torch

from .build import library

_P, _I, _F, _D, _N = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_double, ctypes.c_int
_SIGNATURES = {
    "qatlab_fq_forward": [_P, _P, _I, _I, _I, _P, _P, _N, _F, _F, _F, _F, _F, _P, _N],
    "qatlab_fq_backward": [_P, _P, _P, _I, _I, _I, _P, _P, _N, _F, _F, _F, _F, _F, _P, _D, _P, _P, _P, _N],
    "qatlab_pact_forward": [_P, _P, _I, _P, _F, _F, _F, _N],
    "qatlab_pact_backward": [_P, _P, _P, _I, _P, _F, _F, _P, _N],
    "qatlab_fq_observe_forward": [_P, _P, _I, _I, _I, _F, _F, _P, _P, _N, _P, _P, _F, _F, _P, _P, _D, _D, _D, _N, _N, _P, _P, _P, _N],
    "qatlab_qparams_from_range": [_I, _P, _P, _D, _D, _D, _N, _N, _P, _P],
    "qatlab_mse_search": [_P, _I, _I, _P, _P, _N, _D, _D, _D, _N, _N, _P, _P, _P, _P, _I, _P, _N],
    "qatlab_bn_stats": [_P, _I, _I, _I, _P, _P, _D, _P, _P, _P, _P, _P, _P, _P, _P, _P, _N],
    "qatlab_bn_observe": [_I, _P, _P, _P, _P, _P, _N, _F, _F, _P, _N, _P, _P, _F, _F, _P, _P, _D, _D, _D, _N, _N, _P, _P, _P],
    "qatlab_bn_update_running": [_I, _I, _P, _P, _D, _P, _P],
    "qatlab_bn_fq_forward": [_P, _P, _I, _I, _I, _P, _P, _P, _N, _N, _P, _P, _N, _F, _F, _F, _F, _F, _N],
    "qatlab_bn_fq_backward": [
        _P,
        _P,
        _P,
        _I,
        _I,
        _I,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _N,
        _N,
        _P,
        _P,
        _N,
        _F,
        _F,
        _F,
        _F,
        _F,
        _D,
        _P,
        _P,
        _P,
        _P,
        _N,
    ],
}
# Functions that return a status (0: done, 1: a range or a statistic is NaN or infinite).
_STATUS = frozenset({"qatlab_fq_observe_forward", "qatlab_qparams_from_range", "qatlab_mse_search", "qatlab_bn_stats", "qatlab_bn_observe"})

_local = threading.local()


def _kernels() -> ctypes.CDLL | None:
    lib = library()
    if lib is not None and not getattr(lib, "_qatlab_typed", False):
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, (ctypes.c_int if name in _STATUS else None)
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


def _check_code_range(qmin: int, qmax: int) -> None:
    if not 1 <= qmax - qmin < 2**24:
        raise ValueError(f"qmin {qmin}, qmax {qmax}: need qmin < qmax with fewer than 2**24 codes (float32 holds them exactly)")


class FakeQuantPlan:
    """:func:`fake_quant_fused`'s arguments checked and turned into the kernels' terms,
    once per input shape (a quantizer reuses it on every step: the checks and the layout
    arithmetic cost more than the kernel on a small tensor)."""

    __slots__ = ("outer", "channels", "inner", "zp_per_channel", "qmin", "qmax", "floor", "clo", "chi", "grad_factor", "s_shape", "z_shape")

    def __init__(
        self,
        shape: torch.Size | tuple[int, ...],
        axis: int | None,
        scale_shape: torch.Size | tuple[int, ...],
        zp_shape: torch.Size | tuple[int, ...],
        zp_learned: bool,
        qmin: int,
        qmax: int,
        grad_factor: float = 1.0,
        scale_floor: float | None = None,
        clamp: Bounds | None = None,
    ) -> None:
        shape = torch.Size(shape)
        channels = 1 if axis is None else shape[axis]
        n_s, n_z = math.prod(scale_shape), math.prod(zp_shape)
        if n_s != channels:
            raise ValueError(f"scale has {n_s} values; expected {channels} for axis {axis} of a tensor of shape {tuple(shape)}")
        if n_z not in (1, channels) or (n_z == 1 and channels > 1 and zp_learned):
            raise ValueError(f"zero_point has {n_z} values; expected 1 or {channels} (one per channel when learned)")
        _check_code_range(qmin, qmax)
        self.outer, self.channels, self.inner = _grid(shape, axis)
        self.zp_per_channel = int(n_z > 1)
        self.qmin, self.qmax = float(qmin), float(qmax)
        self.floor = scale_floor or 0.0
        self.clo, self.chi = _clip_bounds(clamp)
        self.grad_factor = float(grad_factor)
        self.s_shape, self.z_shape = torch.Size(scale_shape), torch.Size(zp_shape)

    def grid_args(self, s: torch.Tensor, z: torch.Tensor) -> tuple[object, ...]:
        """The arguments the forward and backward kernels share: the grid, the scale and
        zero point (contiguous float32), the code range, the scale floor and the clamp."""
        return (self.outer, self.channels, self.inner, s.data_ptr(), z.data_ptr(), self.zp_per_channel,
                self.qmin, self.qmax, self.floor, self.clo, self.chi)  # fmt: skip


_lib_typed: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    """The typed kernels, inside the autograd functions (their callers checked :func:`fusable`)."""
    global _lib_typed
    if _lib_typed is None:
        _lib_typed = _kernels()
    return _lib_typed  # type: ignore[return-value]


def _fold_values(fold: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A fold factor per slice of axis 0 ([x.shape[0]]) spread over ``x``'s values."""
    if fold is None:
        return None
    if fold.numel() != x.shape[0] or fold.dtype != torch.float32 or fold.device.type != "cpu":
        raise ValueError(f"fold must be float32 on the CPU with one value per slice of axis 0 ({x.shape[0]}), got {tuple(fold.shape)}")
    return fold.detach().reshape(-1, *[1] * (x.dim() - 1)).expand(x.shape).contiguous()


class _FusedFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, p, fold):  # type: ignore[override]
        # Gradient mode is off in here: the tensors are read through their data pointers.
        xc, s, z = x.contiguous(), scale.contiguous(), zero_point.contiguous()
        fe = _fold_values(fold, xc)
        y = torch.empty_like(xc)
        _lib().qatlab_fq_forward(xc.data_ptr(), y.data_ptr(), *p.grid_args(s, z), _ptr(fe), torch.get_num_threads())
        ctx.save_for_backward(xc, s, z, fe)
        ctx.plan = p
        ctx.fold_shape = None if fold is None else fold.shape
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, s, z, fe = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, ds, dz, dfold = _fq_backward(ctx.plan, x, dy, s, z, need[1], need[2], fe, need[4])
        return (dx if need[0] else None), ds, dz, None, (None if dfold is None else dfold.reshape(ctx.fold_shape))


def _fq_backward(
    p: FakeQuantPlan,
    x: torch.Tensor,
    dy: torch.Tensor,
    s: torch.Tensor,
    z: torch.Tensor,
    need_s: bool,
    need_z: bool,
    fold: torch.Tensor | None = None,
    need_fold: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``dx`` (and LSQ's step / zero-point gradient sums where asked) in one kernel pass;
    with ``fold`` (spread over ``x``), also the fold factors' gradient where asked."""
    dyc = dy.contiguous()
    dx = torch.empty_like(x)
    ds = torch.empty(p.s_shape, dtype=torch.float32) if need_s else None
    dz = torch.empty(p.z_shape, dtype=torch.float32) if need_z else None
    dfe = torch.empty_like(x) if fold is not None and need_fold else None
    _lib().qatlab_fq_backward(
        x.data_ptr(), dyc.data_ptr(), dx.data_ptr(), *p.grid_args(s, z), _ptr(fold), p.grad_factor, _ptr(ds), _ptr(dz), _ptr(dfe),
        torch.get_num_threads(),
    )  # fmt: skip
    # Each slice's fold gradient: its values' terms, summed by torch (float32).
    dfold = None if dfe is None else dfe.reshape(x.shape[0], -1).sum(1)
    return dx, ds, dz, dfold


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
    plan = FakeQuantPlan(
        x.shape, axis, scale.shape, zero_point.shape, zero_point.requires_grad, qmin, qmax, grad_factor, scale_floor, clamp
    )
    return _FusedFakeQuant.apply(x, scale, zero_point, plan, None)


def fake_quant_planned(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, plan: FakeQuantPlan, fold: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`fake_quant_fused` with its arguments' plan made beforehand (for ``x.shape``,
    ``scale.shape``, ``zero_point.shape``: the caller keeps them matched). ``fold`` ([x.shape[0]]):
    quantize ``x · f`` per slice of axis 0 and return the result divided by ``f`` (a weight
    in BN's folded frame), gradient to ``f`` included, in the same passes."""
    return _FusedFakeQuant.apply(x, scale, zero_point, plan, fold)


class _FusedPACT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, qmax, clo, chi):  # type: ignore[override]
        lib = _lib()
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
        lib = _lib()
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


# ---- observed quantizers: range, qparams and fake quantization in one call ----------------

RANGE_ERROR = "x contains NaN or ±Inf; quantization needs finite values"
# How the batch range meets the observer's state (see FakeQuant's module doc).
REPLACE, RUNNING_MINMAX, EMA = 0, 1, 2
# qparams_from_range's width rule: hi − lo, max(−lo, hi), hi.
ASYMMETRIC, SYMMETRIC_SIGNED, SYMMETRIC_UNSIGNED = 0, 1, 2


class NonFiniteRangeError(ValueError):
    """A range is NaN or ±Inf (``qparams_from_range``'s error). ``lo`` and ``hi`` hold the
    observer state that the call produced, which the torch-op path also keeps."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        super().__init__(RANGE_ERROR)
        self.lo, self.hi = lo, hi


class ObservePlan:
    """What an observed quantizer's call needs besides the tensors, worked out once per
    input shape: the [outer, channels, inner] view and the qparams constants."""

    __slots__ = ("outer", "channels", "inner", "clo", "chi", "qmin", "qmax", "div", "scheme", "zero_code", "keep", "take", "backward_plan")

    def __init__(
        self,
        shape: torch.Size | tuple[int, ...],
        axis: int | None,
        qmin: int,
        qmax: int,
        div: float,
        scheme: int,
        decay: float = 0.0,
        clamp: Bounds | None = None,
    ) -> None:
        _check_code_range(qmin, qmax)
        if scheme not in (ASYMMETRIC, SYMMETRIC_SIGNED, SYMMETRIC_UNSIGNED):
            raise ValueError(f"scheme must be 0 (asymmetric), 1 (symmetric signed) or 2 (symmetric unsigned), got {scheme!r}")
        if not div > 0:
            raise ValueError(f"div (quantization steps in the range) must be > 0, got {div!r}")
        self.outer, self.channels, self.inner = _grid(torch.Size(shape), axis)
        self.clo, self.chi = _clip_bounds(clamp)
        self.qmin, self.qmax, self.div, self.scheme = qmin, qmax, float(div), scheme
        # An all-zero asymmetric row: 0.0 must map to a code inside the range.
        self.zero_code = min(max(0, qmin), qmax)
        # ctypes rounds these to float32, as torch rounds a Python scalar multiplying a float32 tensor.
        self.keep, self.take = float(decay), 1.0 - float(decay)
        # The backward is the plain STE's on the qparams the forward derived (one per channel).
        c = (self.channels,)
        self.backward_plan = FakeQuantPlan(shape, axis, c, c, False, qmin, qmax, clamp=clamp)


def _state_arg(t: torch.Tensor | None, n: int, name: str) -> int | None:
    if t is None:
        return None
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() or t.numel() != n:
        raise ValueError(f"{name}: expected a contiguous float32 CPU tensor of {n} values, got {t.dtype} {tuple(t.shape)} on {t.device}")
    return t.data_ptr()


class _FusedObserved(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan, mode, old_lo, old_hi, frac, out, fold):  # type: ignore[override]
        lib = _lib()
        xc = x.contiguous()  # gradient mode is off in here: no detach needed to read it
        fe = _fold_values(fold, xc)
        c = plan.channels
        lo, hi, scale, zpf = (torch.empty(c, dtype=torch.float32) for _ in range(4))
        zp = torch.empty(c, dtype=torch.int32)
        y = torch.empty_like(xc)
        bad = lib.qatlab_fq_observe_forward(
            xc.data_ptr(),
            y.data_ptr(),
            plan.outer,
            c,
            plan.inner,
            plan.clo,
            plan.chi,
            _ptr(fe),
            _state_arg(frac, 2 * c, "frac"),
            mode,
            _state_arg(old_lo, c, "lo") if mode != REPLACE else None,
            _state_arg(old_hi, c, "hi") if mode != REPLACE else None,
            plan.keep,
            plan.take,
            lo.data_ptr(),
            hi.data_ptr(),
            plan.qmin,
            plan.qmax,
            plan.div,
            plan.scheme,
            plan.zero_code,
            scale.data_ptr(),
            zp.data_ptr(),
            zpf.data_ptr(),
            torch.get_num_threads(),
        )
        if bad:
            raise NonFiniteRangeError(lo, hi)
        out.extend((lo, hi, scale, zp))
        ctx.save_for_backward(xc, scale, zpf, fe)
        ctx.plan = plan
        ctx.fold_shape = None if fold is None else fold.shape
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, s, z, fe = ctx.saved_tensors
        dx, _, _, dfold = _fq_backward(ctx.plan.backward_plan, x, dy, s, z, False, False, fe, ctx.needs_input_grad[7])
        return dx, None, None, None, None, None, None, (None if dfold is None else dfold.reshape(ctx.fold_shape))


def observe_fake_quant_fused(
    x: torch.Tensor,
    plan: ObservePlan,
    mode: int = REPLACE,
    lo: torch.Tensor | None = None,
    hi: torch.Tensor | None = None,
    frac: torch.Tensor | None = None,
    fold: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Observe ``x`` (float32, CPU, shaped as ``plan`` says), derive its qparams and
    fake-quantize it with the clipped STE, in one pass to observe and one to quantize.
    ``fold`` ([x.shape[0]]): all of it on ``x · f`` per slice of axis 0, the output divided
    by ``f`` again, as :func:`fake_quant_planned`'s.

    Per channel: the batch range is the min/max of ``clamp(x)``, or with ``frac`` ([2,
    channels]: a search estimator's last fractions) ``frac · max(|min|, |max|)``; ``mode``
    merges it with the state ``lo``/``hi``: REPLACE, RUNNING_MINMAX or EMA (``plan``'s
    decay). Returns ``(y, lo, hi, scale, zero_point)``: the output (gradient to ``x``
    only), the new state and the qparams, equal bit for bit to the observer, then
    ``qparams_from_range``, then the fixed quantizer. A NaN or infinite range raises
    :class:`NonFiniteRangeError` carrying the new state.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError(f"x must be a float32 CPU tensor, got {x.dtype} on {x.device}")
    if mode not in (REPLACE, RUNNING_MINMAX, EMA):
        raise ValueError(f"mode must be REPLACE (0), RUNNING_MINMAX (1) or EMA (2), got {mode!r}")
    if x.numel() != plan.outer * plan.channels * plan.inner:
        raise ValueError(f"x of shape {tuple(x.shape)} does not fit the plan's {plan.outer}x{plan.channels}x{plan.inner} values")
    if mode != REPLACE and (lo is None or hi is None):
        raise ValueError("RUNNING_MINMAX and EMA need the state lo and hi")
    out: list[torch.Tensor] = []
    y = _FusedObserved.apply(x, plan, mode, lo, hi, frac, out, fold)
    return y, out[0], out[1], out[2], out[3]


def qparams_from_range_fused(lo: torch.Tensor, hi: torch.Tensor, plan: ObservePlan) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' qparams arithmetic alone: ``(scale, zero_point)`` of per-row ranges."""
    n = lo.numel()
    lo_p, hi_p = _state_arg(lo, n, "lo"), _state_arg(hi, n, "hi")
    scale, zp = torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.int32)
    lib = _kernels()
    if lib is None:
        raise RuntimeError("the fused kernels are not in use here (switched off, or no build)")
    if lib.qatlab_qparams_from_range(
        n, lo_p, hi_p, plan.qmin, plan.qmax, plan.div, plan.scheme, plan.zero_code, scale.data_ptr(), zp.data_ptr()
    ):
        raise ValueError(RANGE_ERROR)
    return scale, zp


# ---- the mse estimator's range search ------------------------------------------------------


# Rows this long first bound every candidate's error from one histogram pass and evaluate
# only those that can win (a 4-bit activation of 10^5..10^6 values: a handful of the 100).
# Below it the binning costs more than it saves.
PRUNE_MIN_VALUES = 16384


class MSESearch(NamedTuple):
    """Per row: the chosen range, its squared error, (when asked) every candidate's, and
    how many candidates were evaluated in full."""

    lo: torch.Tensor
    hi: torch.Tensor
    err: torch.Tensor
    errs: torch.Tensor | None
    evaluated: torch.Tensor


def mse_search_fused(
    rows: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    grid: int,
    plan: ObservePlan,
    nthreads: int | None = None,
    all_errors: bool = False,
    min_prune: int = PRUNE_MIN_VALUES,
) -> MSESearch:
    """:func:`qatlab.quant.estimators.mse`'s search in one pass over ``rows`` ([P, N],
    float32, CPU): per row, the candidate range ``k/grid · [lo, hi]`` (k = 1..grid; ``lo``,
    ``hi`` the row's min and max) whose fake quantization with ``plan``'s qparams
    arithmetic has the least squared error, the first on ties. The candidates, their
    qparams and each value's fake quantization equal the reference's bit for bit; the
    errors are its float64 sums added in another order. ``nthreads`` (default torch's)
    does not change the result. ``all_errors``: also return the [P, grid] error table
    (every candidate evaluated). Rows of at least ``min_prune`` values (0: none) evaluate
    only the candidates whose error bounds, from one histogram pass, leave them a chance
    to win; the result is the full search's bit for bit (``evaluated`` says how many)."""
    if rows.dim() != 2 or rows.dtype != torch.float32 or rows.device.type != "cpu":
        raise TypeError(f"rows must be a 2-D float32 CPU tensor, got {rows.dtype} {tuple(rows.shape)} on {rows.device}")
    p, n = rows.shape
    if n == 0 or p == 0:
        raise ValueError(f"rows of shape {tuple(rows.shape)}: the search needs at least one value per row")
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid (mse_grid) must be an int >= 1, got {grid!r}")
    lo_p, hi_p = _state_arg(lo, p, "lo"), _state_arg(hi, p, "hi")
    lib = _kernels()
    if lib is None:
        raise RuntimeError("the fused kernels are not in use here (switched off, or no build)")
    xc = rows.detach().contiguous()
    out_lo, out_hi = torch.empty(p, dtype=torch.float32), torch.empty(p, dtype=torch.float32)
    err = torch.empty(p, dtype=torch.float64)
    errs = torch.empty(p, grid, dtype=torch.float64) if all_errors else None
    threads = torch.get_num_threads() if nthreads is None else int(nthreads)
    if threads < 1:
        raise ValueError(f"nthreads must be >= 1, got {nthreads!r}")
    if isinstance(min_prune, bool) or not isinstance(min_prune, int) or min_prune < 0:
        raise ValueError(f"min_prune must be an int >= 0, got {min_prune!r}")
    evaluated = torch.empty(p, dtype=torch.int32)
    if lib.qatlab_mse_search(
        xc.data_ptr(),
        p,
        n,
        lo_p,
        hi_p,
        grid,
        plan.qmin,
        plan.qmax,
        plan.div,
        plan.scheme,
        plan.zero_code,
        out_lo.data_ptr(),
        out_hi.data_ptr(),
        err.data_ptr(),
        _ptr(errs),
        min_prune,
        evaluated.data_ptr(),
        threads,
    ):
        raise ValueError(RANGE_ERROR)
    return MSESearch(out_lo, out_hi, err, errs, evaluated)


# ---- BatchNorm on batch statistics, fused with the quantizer after it ----------------------

# The quantizer after the BatchNorm: an affine grid (an observed quantizer's qparams, or
# LSQ's learned step and zero point), or PACT's learned clip.
AFFINE, PACT = 0, 1


class BNQuantPlan:
    """A BatchNorm-then-quantizer call's constants, worked out once per input shape: the
    [N, C, H·W] view, the quantizer kind, its rows (the tensor, or one per channel) and
    code range, LSQ's gradient factor and the clamp; ``observe`` for an observed quantizer."""

    __slots__ = ("n", "c", "hw", "kind", "rows_pc", "zp_pc", "qmin", "qmax", "floor", "clo", "chi", "grad_factor", "observe")

    def __init__(
        self,
        shape: torch.Size | tuple[int, ...],
        kind: int,
        rows_pc: bool,
        qmin: int,
        qmax: int,
        zp_pc: bool = False,
        scale_floor: float | None = None,
        clamp: Bounds | None = None,
        grad_factor: float = 1.0,
        observe: ObservePlan | None = None,
    ) -> None:
        if len(shape) < 2:
            raise ValueError(f"BatchNorm input must have a channel axis (N, C, ...), got shape {tuple(shape)}")
        if kind not in (AFFINE, PACT):
            raise ValueError(f"kind must be AFFINE (0) or PACT (1), got {kind!r}")
        _check_code_range(qmin, qmax)
        self.n, self.c = int(shape[0]), int(shape[1])
        self.hw = math.prod(shape[2:])
        if self.n * self.hw < 2:
            raise ValueError(f"BatchNorm on batch statistics needs more than one value per channel, got shape {tuple(shape)}")
        self.kind, self.rows_pc, self.zp_pc = kind, int(rows_pc), int(zp_pc)
        self.qmin, self.qmax = float(qmin), float(qmax)
        self.floor = scale_floor or 0.0
        self.clo, self.chi = _clip_bounds(clamp)
        self.grad_factor = float(grad_factor)
        if observe is not None and (kind != AFFINE or observe.channels != (self.c if rows_pc else 1)):
            raise ValueError("an observed quantizer is affine, with one range per row of the plan")
        self.observe = observe
        if observe is not None:
            self.zp_pc = self.rows_pc  # an observed quantizer has one zero point per row

    @property
    def rows(self) -> int:
        return self.c if self.rows_pc else 1


class BNQuantOut(NamedTuple):
    """The output, and what the call found: per channel the batch mean and 1/std and the
    BN output's form ``z = (x − shift)·a + b`` (float32, as the kernels compute it, each
    step rounded apart); for an observed quantizer the new range state and its qparams
    (else None)."""

    y: torch.Tensor
    mean: torch.Tensor
    invstd: torch.Tensor
    shift: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    lo: torch.Tensor | None
    hi: torch.Tensor | None
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None


class _FusedBNQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, q1, q2, plan, stats):  # type: ignore[override]
        shift, centre, invstd, a, b = stats
        y = torch.empty_like(x)
        _lib().qatlab_bn_fq_forward(
            x.data_ptr(), y.data_ptr(), plan.n, plan.c, plan.hw, shift.data_ptr(), a.data_ptr(), b.data_ptr(), plan.kind, plan.rows_pc,
            q1.data_ptr(), _ptr(q2), plan.zp_pc, plan.qmin, plan.qmax, plan.floor, plan.clo, plan.chi, torch.get_num_threads(),
        )  # fmt: skip
        ctx.save_for_backward(x, gamma, q1, q2, shift, centre, invstd, a, b)
        ctx.plan = plan
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, gamma, q1, q2, shift, centre, invstd, a, b = ctx.saved_tensors
        p = ctx.plan
        need = ctx.needs_input_grad
        dyc = dy.contiguous()
        dx = torch.empty_like(x) if need[0] else None
        dgamma = torch.empty(p.c, dtype=torch.float32) if need[1] else None
        dbeta = torch.empty(p.c, dtype=torch.float32) if need[2] else None
        d1 = torch.empty(q1.shape, dtype=torch.float32) if need[3] else None
        d2 = torch.empty(q2.shape, dtype=torch.float32) if need[4] else None
        _lib().qatlab_bn_fq_backward(
            x.data_ptr(), dyc.data_ptr(), _ptr(dx), p.n, p.c, p.hw, shift.data_ptr(), centre.data_ptr(), invstd.data_ptr(), _ptr(gamma),
            a.data_ptr(), b.data_ptr(), p.kind, p.rows_pc, q1.data_ptr(), _ptr(q2), p.zp_pc, p.qmin, p.qmax, p.floor,
            p.clo, p.chi, p.grad_factor, _ptr(dgamma), _ptr(dbeta), _ptr(d1), _ptr(d2), torch.get_num_threads(),
        )  # fmt: skip
        return dx, dgamma, dbeta, d1, d2, None, None


def bn_fusable(x: torch.Tensor, bn: torch.nn.Module) -> bool:
    """Whether :func:`batch_norm_fake_quant_fused` can stand in for ``bn(x)``: a 4-D float32
    CPU input, ``bn`` a BatchNorm2d in training (batch statistics) with float32 CPU
    parameters and state, more than one value per channel, and no hooks on ``bn`` (which
    the fused call would skip)."""
    if not (isinstance(bn, torch.nn.BatchNorm2d) and bn.training and x.dim() == 4 and fusable(x)):
        return False
    if x.shape[1] != bn.num_features or x.shape[0] * x.shape[2] * x.shape[3] < 2:
        return False
    g = torch.nn.modules.module
    if bn._forward_hooks or bn._forward_pre_hooks or g._global_forward_hooks or g._global_forward_pre_hooks:
        return False
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous()):
            return False
    return True


def bn_momentum(bn: torch.nn.Module) -> tuple[float, torch.Tensor | None]:
    """The factor by which a training step moves ``bn``'s running statistics, and its batch
    counter (None if it keeps none), as ``_BatchNorm.forward`` works them out; the caller
    adds the batch to the counter once the step has run."""
    tracked = bn.num_batches_tracked if bn.track_running_stats else None
    if bn.momentum is not None:
        return float(bn.momentum), tracked
    return (0.0 if tracked is None else 1.0 / float(int(tracked) + 1)), tracked


def batch_norm_fake_quant_fused(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    eps: float,
    plan: BNQuantPlan,
    q1: torch.Tensor,
    q2: torch.Tensor | None = None,
    observe: tuple[int, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None] | None = None,
) -> BNQuantOut | None:
    """``fq(clip(batch_norm(x)))``, BatchNorm on the batch's statistics (training), in one
    pass over ``x`` for the statistics and one to normalize and quantize; the backward in
    two passes. The quantizer: ``plan.kind`` AFFINE with ``q1``/``q2`` its scale and zero
    point (LSQ's learned ones, used as ``max(|s|, plan.floor)`` and rounded, with their
    gradients), or with ``observe = (mode, lo, hi, frac)`` an observed quantizer whose
    range comes from the statistics (as :func:`observe_fake_quant_fused` on the BN output);
    PACT with ``q1`` its clip α. ``running_mean``/``running_var`` (None: not tracked) move
    by ``momentum``, as torch's ``batch_norm`` moves them.

    Returns None, having changed nothing, where a statistic or the observed range is NaN or
    infinite: the caller then runs BatchNorm and the quantizer apart, which raise or carry
    on as they do. Gradients flow to ``x``, ``weight``, ``bias`` and the learned ``q1``/``q2``.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError(f"x must be a float32 CPU tensor, got {x.dtype} on {x.device}")
    if tuple(x.shape[:2]) != (plan.n, plan.c) or x.numel() != plan.n * plan.c * plan.hw:
        raise ValueError(f"x of shape {tuple(x.shape)} does not fit the plan's {plan.n}x{plan.c}x{plan.hw} values")
    c = plan.c
    for t, name in ((weight, "weight"), (bias, "bias"), (running_mean, "running_mean"), (running_var, "running_var")):
        _state_arg(t, c, name)
    if (observe is None) != (plan.observe is None):
        raise ValueError("observe (mode, lo, hi, frac) goes with a plan made with an ObservePlan, and only with one")
    if observe is None:
        _state_arg(q1, 1 if plan.kind == PACT else plan.rows, "alpha" if plan.kind == PACT else "scale")
        if plan.kind == AFFINE:
            if q2 is None:
                raise ValueError("an affine quantizer needs its zero point (q2)")
            _state_arg(q2, plan.rows if plan.zp_pc else 1, "zero_point")
    lib = _kernels()
    if lib is None:
        raise RuntimeError("the fused kernels are not in use here (switched off, or no build)")
    xc = x.contiguous()
    mean, var = torch.empty(c, dtype=torch.float64), torch.empty(c, dtype=torch.float64)
    shift, centre, invstd, a, b, xmin, xmax = (torch.empty(c, dtype=torch.float32) for _ in range(7))
    w = None if weight is None else weight.detach()
    bb = None if bias is None else bias.detach()
    if lib.qatlab_bn_stats(
        xc.data_ptr(), plan.n, c, plan.hw, _ptr(w), _ptr(bb), float(eps), mean.data_ptr(), var.data_ptr(),
        shift.data_ptr(), centre.data_ptr(), invstd.data_ptr(), a.data_ptr(), b.data_ptr(), xmin.data_ptr(), xmax.data_ptr(), torch.get_num_threads(),
    ):  # fmt: skip
        return None
    lo = hi = scale = zp = None
    if observe is not None:
        op = plan.observe
        mode, old_lo, old_hi, frac = observe
        rows = plan.rows
        lo, hi, scale, zpf = (torch.empty(rows, dtype=torch.float32) for _ in range(4))
        zp = torch.empty(rows, dtype=torch.int32)
        if lib.qatlab_bn_observe(
            c, shift.data_ptr(), a.data_ptr(), b.data_ptr(), xmin.data_ptr(), xmax.data_ptr(), plan.rows_pc, plan.clo, plan.chi,
            _state_arg(frac, 2 * rows, "frac"), mode,
            _state_arg(old_lo, rows, "lo") if mode != REPLACE else None,
            _state_arg(old_hi, rows, "hi") if mode != REPLACE else None,
            op.keep, op.take, lo.data_ptr(), hi.data_ptr(), op.qmin, op.qmax, op.div, op.scheme, op.zero_code,
            scale.data_ptr(), zp.data_ptr(), zpf.data_ptr(),
        ):  # fmt: skip
            return None
        q1, q2 = scale, zpf
    if running_mean is not None or running_var is not None:
        lib.qatlab_bn_update_running(
            c, plan.n * plan.hw, mean.data_ptr(), var.data_ptr(), float(momentum), _ptr(running_mean), _ptr(running_var)
        )
    stats = (shift, centre, invstd, a, b)
    y = _FusedBNQuant.apply(xc, weight, bias, q1.contiguous(), None if q2 is None else q2.contiguous(), plan, stats)
    return BNQuantOut(y, mean.float(), invstd, shift, a, b, lo, hi, scale, zp)
