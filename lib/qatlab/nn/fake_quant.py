"""FakeQuant: one tensor's quantizer as a module — range observer state, qparams, STE.

Observation and fake quantization switch on and off separately (PTQ calibration
observes without training; evaluation fake-quantizes without observing).

Range bookkeeping (``role``):
* ``weight``: the range is re-estimated from the current weights on every call.
* ``act``: a running range across batches: ``minmax`` keeps the running min/max
  (as torch's MinMaxObserver); ``ema`` and the batch estimators (``meanstd``,
  ``percentile``, ``mse``, ``entropy``) average per-batch ranges with decay ``ema_decay``.

Search estimators (``mse``, ``entropy``, ``percentile``: a grid search, a histogram
search, a selection) cost tens of passes over the tensor. Calibration runs them on
every batch. In QAT, where the observers run on every training step, they run on
every ``refresh_every``-th observation only, because what they find, the clip as a
fraction of the largest magnitude, moves slowly while the magnitude itself moves
with every batch and every weight update: the steps between take one min/max pass
and scale the fractions of the last search by it. ``refresh_every=1`` searches on
every step (the exact, slow reference).

On float32 CPU tensors the fixed (clipped-STE), LSQ and PACT quantizers run on the
fused kernels of :mod:`qatlab.nn.fused` (one pass forward, one backward, a layer's
clamp included); elsewhere, or with ``QATLAB_FUSED=0``, on the torch-op functions of
:mod:`qatlab.nn.ste` and ``_PACTFast``, which the kernels equal value for value. An
observing fixed quantizer with a min/max-based range (``minmax``, ``ema``, a search
estimator between its searches) observes, derives its qparams and fake-quantizes in one
kernel call (``_observe_fused``); the search steps and the other estimators take the
torch-op observer (``_observe``), the reference it equals. The ``mse`` search itself runs on
the fused one-pass search (:func:`search_range`) on float32 CPU tensors. A quantizer right
after a BatchNorm in training (``QuantConv2d`` with live statistics) can take the
BatchNorm into its own call (``after_batch_norm``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from qatlab.quant import QParams, QuantSpec, estimate_range, estimators, layout_for, qparams_from_range, to_rows
from qatlab.quant.estimators import ESTIMATOR_FNS, row_minmax
from qatlab.quant.granularity import Layout, from_rows
from qatlab.quant.qparams import scale_divisor

from .fused import Bounds, fake_quant_fused, fusable, pact_fake_quant_fused
from .fused.ops import (
    AFFINE,
    ASYMMETRIC,
    EMA,
    PACT,
    REPLACE,
    RUNNING_MINMAX,
    SYMMETRIC_SIGNED,
    SYMMETRIC_UNSIGNED,
    BNQuantPlan,
    FakeQuantPlan,
    NonFiniteRangeError,
    ObservePlan,
    batch_norm_fake_quant_fused,
    bn_fusable,
    bn_momentum,
    enabled,
    fake_quant_planned,
    mse_search_fused,
    observe_fake_quant_fused,
)
from .ste import STE_KINDS, fake_quant, lsq_fake_quant, lsq_grad_factor, pact_fake_quant

# torch's global buffer-registration hooks (None if this torch has none): see FakeQuant._set_range.
_BUFFER_HOOKS: dict | None = getattr(torch.nn.modules.module, "_global_buffer_registration_hooks", None)  # type: ignore[type-arg]

ROLES = ("weight", "act")
SEARCH_ESTIMATORS = frozenset({"mse", "entropy", "percentile"})
# The costliest recipe searches per-channel MSE ranges for every weight of the model:
# ~1.5 s for LeNet on one core, 13x its training step. Once per 128 steps that is
# ~10 % of a step on average, and a few searches per epoch still follow the weights.
DEFAULT_REFRESH_EVERY = 128
# LSQ's learned step is used as max(|step|, SCALE_FLOOR): a step driven to <= 0 would divide by zero.
SCALE_FLOOR = 1e-8


class _PACTFast(torch.autograd.Function):
    """PACT's fake quantization in one rounding pass; :func:`pact_fake_quant` is the reference.

    Forward: codes ``clamp(round(x·(1/s)), 0, top)·s`` with ``s = α/qmax`` and ``top``
    the code of α itself, bit-identical to quantizing ``clamp(x, 0, α)`` as the reference
    does (rounding is monotone, so every ``x ≥ α`` lands on α's code). Backward, as the
    reference's: ``dx = dy`` where ``0 < x < α``, ``dα = Σ dy`` where ``x ≥ α``. The
    reference builds the clip, the quantized copy and a straight-through sum as separate
    tensors (about half of the PACT step's quantizer time on the CPU).
    """

    @staticmethod
    def forward(ctx, x, alpha, qmax):  # type: ignore[override]
        a = alpha.detach().reshape(()).float()
        s = (a / qmax).clamp(min=1e-12)
        inv = torch.tensor(1.0, dtype=torch.float32, device=x.device) / s
        # α <= 0 leaves no codes above 0 (the reference's clip is then 0 or α <= 0).
        top = torch.round(a * inv).clamp(0, qmax)
        t = x.detach() * inv
        t.round_()
        ctx.save_for_backward(x, a)
        return torch.minimum(t.clamp_(min=0), top).mul_(s)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, a = ctx.saved_tensors
        above = x >= a
        dx = dy.masked_fill(above | (x <= 0), 0) if ctx.needs_input_grad[0] else None
        da = dy.masked_fill(~above, 0).sum().reshape(1) if ctx.needs_input_grad[1] else None
        return dx, da, None


def pact_fake_quant_fast(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`pact_fake_quant`'s values and gradients, from fewer full-size passes."""
    return _PACTFast.apply(x, alpha, 2**bits - 1)


def _clamped(x: torch.Tensor, clamp: Bounds | None) -> torch.Tensor:
    return x if clamp is None else x.clamp(*clamp)


def _per_layout(x: torch.Tensor, layout: Layout, fq: Callable[[torch.Tensor, int | None], torch.Tensor]) -> torch.Tensor:
    """``fq(values, axis)`` on ``x`` laid out for it: whole (axis None), along the channel
    axis, or as one row per group/element (axis 0 of the rows, folded back)."""
    if layout.kind == "tensor":
        return fq(x, None)
    if layout.kind == "channel":
        return fq(x, layout.axis)
    return from_rows(fq(to_rows(x, layout), 0), x.shape, layout)


def search_range(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """A search estimator's per-row range of ``rows`` [P, N], as :func:`estimate_range`:
    ``mse`` on float32 CPU rows takes the fused one-pass search (same candidates and
    qparams, its float64 error sums added in another order), the rest the reference.
    The kernel stands in for :func:`qatlab.quant.estimators.mse` only: an estimator
    registered over it under the same name is honoured."""
    if spec.estimator != "mse" or ESTIMATOR_FNS.get("mse") is not estimators.mse or not fusable(rows):
        return estimate_range(rows, spec)
    with torch.no_grad():
        r = rows.detach()
        lo0, hi0 = row_minmax(r)
        scheme = ASYMMETRIC if not spec.symmetric else (SYMMETRIC_SIGNED if spec.is_signed else SYMMETRIC_UNSIGNED)
        plan = ObservePlan(r.shape, 0, spec.qmin, spec.qmax, scale_divisor(spec), scheme)
        found = mse_search_fused(r, lo0.contiguous(), hi0.contiguous(), spec.mse_grid, plan)
    return found.lo, found.hi


def _check_refresh_every(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"refresh_every must be an int >= 0 (0: search only while calibrating), got {n!r}")
    return n


class FakeQuant(nn.Module):
    def __init__(self, spec: QuantSpec, ste: str = "clipped", role: str = "act") -> None:
        super().__init__()
        if ste not in STE_KINDS:
            raise ValueError(f"ste {ste!r} is unknown; expected one of {', '.join(STE_KINDS)}")
        if role not in ROLES:
            raise ValueError(f"role {role!r} is unknown; expected one of {', '.join(ROLES)}")
        if ste == "pact":
            if role != "act":
                raise ValueError("ste 'pact' learns an activation clip; weights use identity, clipped or lsq")
            if spec.is_signed or spec.granularity_kind != "tensor":
                raise ValueError("ste 'pact' needs an unsigned per-tensor activation spec (signed=False, granularity='tensor')")
        self.spec = spec
        self.ste = ste
        self.role = role
        self.observe = True
        self.enabled = True
        # While calibrating, learned quantizers observe and apply their observed range;
        # their learned parameters are initialised from it afterwards (init_learned).
        self.calibrating = False
        self.refresh_every = DEFAULT_REFRESH_EVERY
        # The last search's clip per row as fractions of the row's largest magnitude,
        # [2, rows] (lo, hi); derived state, so not saved with the model.
        self.register_buffer("clip_frac", torch.empty(0), persistent=False)
        self._since_search = 0
        self.register_buffer("lo", torch.empty(0))
        self.register_buffer("hi", torch.empty(0))
        self.register_buffer("initialized", torch.tensor(False))
        if ste == "lsq":
            self.scale = nn.Parameter(torch.empty(0))
            self.zero_point = nn.Parameter(torch.empty(0), requires_grad=not spec.symmetric)
        elif ste == "pact":
            self.alpha = nn.Parameter(torch.empty(0))

    # ---- state --------------------------------------------------------------------
    def extra_repr(self) -> str:
        s = self.spec
        return f"bits={s.bits}, {s.granularity}, {s.estimator}, {'sym' if s.symmetric else 'asym'}, ste={self.ste}, role={self.role}"

    @property
    def refresh_every(self) -> int:
        """Observations between two runs of a search estimator outside calibration
        (1: every one; 0: none, the fractions found while calibrating stay)."""
        return self._refresh_every

    @refresh_every.setter
    def refresh_every(self, n: int) -> None:
        self._refresh_every = _check_refresh_every(n)

    def _batch_range(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.estimator not in SEARCH_ESTIMATORS:
            return estimate_range(rows, self.spec)
        with torch.no_grad():
            mm_lo, mm_hi = row_minmax(rows)
            mag = torch.maximum(mm_lo.abs(), mm_hi.abs()).float()
        if not self._search_due(mag.numel()):
            self._since_search += 1
            return self.clip_frac[0] * mag, self.clip_frac[1] * mag
        lo, hi = search_range(rows, self.spec)
        # An all-zero row has no magnitude to scale: its fractions are 0 and its range stays 0.
        safe = torch.where(mag > 0, mag, torch.ones_like(mag))
        self.clip_frac = torch.stack([lo / safe, hi / safe])
        self._since_search = 0
        return lo, hi

    def _search_due(self, rows: int) -> bool:
        """Whether this observation runs the search estimator (else it tracks by min/max)."""
        n = self._refresh_every
        return self.calibrating or self.clip_frac.shape != (2, rows) or n == 1 or (n > 1 and self._since_search + 1 >= n)

    def _observe(self, x: torch.Tensor, layout: Layout) -> None:
        lo, hi = self._batch_range(to_rows(x.detach(), layout))
        if self.role == "weight" or self.lo.numel() != lo.numel():
            self.lo, self.hi = lo, hi
        elif self.spec.estimator == "minmax":
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        else:
            d = self.spec.ema_decay
            self.lo, self.hi = d * self.lo + (1 - d) * lo, d * self.hi + (1 - d) * hi

    def _init_learned(self, layout: Layout, x: torch.Tensor | None) -> None:
        qp = qparams_from_range(self.lo, self.hi, self.spec, layout)
        with torch.no_grad():
            if self.ste == "lsq":
                self.scale.data = qp.scale.clone()
                self.zero_point.data = qp.zero_point.float().clone()
            else:  # pact: start the clip at the observed top of the range
                self.alpha.data = self.hi.clamp(min=1e-3).reshape(1).clone()
        self.initialized.fill_(True)
        self.__dict__["_init_cache"] = True

    @property
    def is_initialized(self) -> bool:
        """Whether LSQ's scale / PACT's clip hold learned values (the ``initialized``
        buffer, mirrored in Python: reading a CUDA buffer on every forward would make
        each quantizer wait for the GPU)."""
        c = self.__dict__.get("_init_cache")
        if c is None:
            c = self.__dict__["_init_cache"] = bool(self.initialized)
        return c

    def qparams(self, x_shape: torch.Size | tuple[int, ...] | None = None) -> QParams:
        """The qparams this quantizer applies now (learned or observed)."""
        layout = self._layout_for_shape(x_shape)
        if self.ste == "lsq" and self.is_initialized:
            zp = torch.round(self.zero_point.detach().clamp(self.spec.qmin, self.spec.qmax)).to(torch.int32)
            return QParams(self.scale.detach().abs().clamp(min=SCALE_FLOOR).float().clone(), zp, self.spec.qmin, self.spec.qmax, layout)
        if self.ste == "pact" and self.is_initialized:
            scale = (self.alpha.detach().reshape(1) / self.spec.qmax).clamp(min=1e-12).float()
            return QParams(scale, torch.zeros(1, dtype=torch.int32), 0, self.spec.qmax, layout)
        if self.lo.numel() == 0:
            raise RuntimeError("quantizer has observed no data yet: run calibration batches first")
        return qparams_from_range(self.lo, self.hi, self.spec, layout)

    def _layout_for_shape(self, shape: torch.Size | tuple[int, ...] | None) -> Layout:
        if shape is None:
            shape = getattr(self, "_last_shape", None)
        if shape is None:
            if self.spec.granularity_kind == "tensor":
                return Layout("tensor")
            raise RuntimeError("quantizer has seen no tensor yet; pass its shape")
        return layout_for(torch.empty(shape, device="meta"), self.spec)

    # ---- forward ------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, numel: int | None = None, clamp: Bounds | None = None, fold: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fake-quantize ``x``, or ``x.clamp(*clamp)`` where a layer's clamp (ReLU6) comes
        first: the fused kernels apply it in the same pass, gradient included. ``numel``:
        how many values ``x`` stands for in LSQ's gradient scale, where it is a max-pooled
        view of a larger tensor. ``fold`` (one factor per slice of axis 0): quantize
        ``x · f`` and return it divided by ``f`` again, a weight in BatchNorm's folded frame
        (``QuantConv2d`` while BN statistics are live); the fused kernels take the product
        and the quotient into their passes, gradients to ``x`` and ``f`` included."""
        if fold is not None:
            y = self._folded_fused(x, numel, clamp, fold)
            if y is not None:
                return y
            f = fold.reshape(-1, *[1] * (x.dim() - 1))
            return self.forward(x * f, numel, clamp) / f
        if not self.enabled and not self.observe:
            return _clamped(x, clamp)
        if self.ste in ("lsq", "pact") and self.enabled and self.is_initialized:
            # Learned and ready: no observer, and the kernels take the call as it comes.
            if self.ste == "lsq":
                y = self._lsq_planned(x, numel, clamp)
            elif fusable(x, self.alpha):
                self.__dict__["_last_shape"] = tuple(x.shape)
                y = pact_fake_quant_fused(x, self.alpha, self.spec.bits, clamp)
            else:
                y = None
            if y is not None:
                return y
        elif self.observe and self.enabled:
            y = self._observe_fused(x, clamp)
            if y is not None:
                return y
        self._last_shape = tuple(x.shape)
        layout = layout_for(x, self.spec)
        learned_ready = self.ste in ("lsq", "pact") and self.is_initialized
        if self.observe and not learned_ready:
            self._observe(_clamped(x.detach(), clamp), layout)
        if not self.enabled:
            return _clamped(x, clamp)
        if self.ste in ("lsq", "pact") and not self.is_initialized:
            if self.calibrating:
                qp = qparams_from_range(self.lo, self.hi, self.spec, layout)
                return self._apply_fixed(x, qp, layout, "clipped", clamp)
            self._init_learned(layout, x)
        if self.ste == "pact":
            if fusable(x, self.alpha):
                return pact_fake_quant_fused(x, self.alpha, self.spec.bits, clamp)
            x = _clamped(x, clamp)
            if x.device.type == "cpu":
                return pact_fake_quant_fast(x, self.alpha, self.spec.bits)
            return pact_fake_quant(x, self.alpha, self.spec.bits)
        if self.ste == "lsq":
            return self._lsq(x, layout, numel, clamp)
        return self._apply_fixed(x, self._observed_qparams(layout), layout, self.ste, clamp)

    def _folded_fused(self, x: torch.Tensor, numel: int | None, clamp: Bounds | None, fold: torch.Tensor) -> torch.Tensor | None:
        """``forward(x · f) / f`` on the kernels where they take it (LSQ ready, or observing
        with the clipped STE, the layout per tensor or per channel); else None."""
        if x.dim() == 0 or fold.numel() != x.shape[0] or not fusable(x, fold) or not self.enabled:
            return None
        if self.ste == "lsq" and self.is_initialized:
            return self._lsq_planned(x, numel, clamp, fold)
        if self.observe and not (self.ste == "pact" and self.is_initialized):
            return self._observe_fused(x, clamp, fold)
        return None

    def _observe_fused(self, x: torch.Tensor, clamp: Bounds | None, fold: torch.Tensor | None = None) -> torch.Tensor | None:
        """Observe, derive the qparams and fake-quantize in one kernel call, where the
        quantizer applies its observed range with the clipped STE (the fixed quantizers,
        and the learned ones while calibrating) and the estimator is min/max-based (a
        search estimator between its searches); None where the torch-op path must run.
        The state, qparams and output equal that path's (``_observe``,
        ``qparams_from_range``, ``_apply_fixed``) bit for bit."""
        args = self._observe_args(x, clamp)
        if args is None:
            return None
        plan, mode, lo, hi, frac = args
        layout, oplan = plan[3], plan[4]
        if fold is not None and layout.kind not in ("tensor", "channel"):
            return None  # rows of groups/elements reorder the values the factors follow
        if frac is not None:
            self._since_search += 1
        v = x if layout.kind in ("tensor", "channel") else to_rows(x, layout)
        self.__dict__["_last_shape"] = plan[6]
        try:
            y, lo, hi, _, _ = observe_fake_quant_fused(v, oplan, mode, lo, hi, frac, fold)
        except NonFiniteRangeError as e:
            self.lo, self.hi = e.lo, e.hi
            raise
        self._set_range(lo, hi)
        return y if v is x else from_rows(y, x.shape, layout)

    def _observe_args(self, x: torch.Tensor, clamp: Bounds | None) -> tuple | None:  # type: ignore[type-arg]
        """``(plan, mode, lo, hi, frac)`` for an observing kernel call on ``x``: the
        quantizer applies its observed range with the clipped STE (the fixed quantizers, and
        the learned ones while calibrating), the estimator is min/max-based (a search
        estimator between its searches: ``frac`` its fractions) and the state is float32 on
        the CPU; else None, and the torch-op path runs."""
        ste = self.ste
        if ste != "clipped" and (ste == "identity" or not self.calibrating or self.is_initialized):
            return None
        if not fusable(x):
            return None
        plan = self._fused_plan(x, clamp)
        if plan is None:
            return None
        rows = plan[4].channels
        frac = None
        if plan[5]:
            if self._search_due(rows):
                return None
            frac = self.clip_frac
            if frac.dtype != torch.float32 or frac.device.type != "cpu" or not frac.is_contiguous():
                return None
        lo, hi = self.lo, self.hi
        if self.role == "weight" or lo.numel() != rows:
            mode = REPLACE
        else:
            mode = RUNNING_MINMAX if self.spec.estimator == "minmax" else EMA
            for t in (lo, hi):
                if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
                    return None
        return plan, mode, lo, hi, frac

    def after_batch_norm(self, x: torch.Tensor, bn: nn.Module, clamp: Bounds | None = None) -> torch.Tensor | None:
        """``self(bn(x), None, clamp)`` for a BatchNorm in training (batch statistics), on
        the kernels of :func:`qatlab.nn.fused.ops.batch_norm_fake_quant_fused`: the BN
        output is never written, and an observed range comes from the statistics pass.
        The BN's running statistics and batch count move as its own forward moves them.
        None, with nothing changed, where the two must run apart (the quantizer not a
        clipped, ready LSQ or ready PACT one; a layout other than per tensor or per
        channel of axis 1; hooks on ``bn``; a NaN or infinite statistic or range)."""
        if not self.enabled or not bn_fusable(x, bn):
            return None
        ste, observe, fplan = self.ste, None, None
        q1: torch.Tensor | None = None
        q2: torch.Tensor | None = None
        if ste in ("lsq", "pact") and self.is_initialized:
            q1, q2 = (self.scale, self.zero_point) if ste == "lsq" else (self.alpha, None)
            if not fusable(x, q1, *(() if q2 is None else (q2,))):
                return None
        elif ste == "clipped" and self.observe:
            args = self._observe_args(x, clamp)
            if args is None:
                return None
            fplan, mode, lo, hi, frac = args
            observe = (mode, lo, hi, frac)
        elif ste != "clipped" or self.lo.numel() == 0:
            return None
        p = self._bn_plan(x, clamp, q1, q2, fplan)
        if p is None:
            return None
        plan, layout = p
        if ste == "clipped" and observe is None:  # a range kept fixed (observers off)
            qp = self._observed_qparams(layout)
            q1, q2 = qp.scale, qp.zero_point.float()
            if not fusable(x, q1) or q1.numel() != plan.rows:
                return None
        momentum, tracked = bn_momentum(bn)
        out = batch_norm_fake_quant_fused(
            x, bn.weight, bn.bias, bn.running_mean, bn.running_var, momentum, bn.eps, plan,
            q1 if q1 is not None else x, q2, observe,
        )  # fmt: skip
        if out is None:
            return None
        if tracked is not None:
            tracked.add_(1)
        if observe is not None:
            if observe[3] is not None:
                self._since_search += 1
            self._set_range(out.lo, out.hi)  # type: ignore[arg-type]
        self.__dict__["_last_shape"] = tuple(x.shape)
        return out.y

    def _bn_plan(
        self,
        x: torch.Tensor,
        clamp: Bounds | None,
        q1: torch.Tensor | None,
        q2: torch.Tensor | None,
        fplan: tuple | None = None,  # type: ignore[type-arg]
    ) -> tuple[BNQuantPlan, Layout] | None:
        """The quantizer's :class:`BNQuantPlan` for this input and its layout, kept while
        the shape, spec, clamp, kind and the learned parameters' shapes stay; None for a
        layout the kernels do not take (rows other than the tensor or axis 1's channels)."""
        kind = self.ste if q1 is not None else ("observed" if fplan is not None else "fixed")
        key = (x.shape, self.spec, clamp, kind, None if q1 is None else q1.shape, None if q2 is None else (q2.shape, q2.requires_grad))
        p = self.__dict__.get("_bnplan")
        if p is not None and p[0] == key and (fplan is None or p[3] is fplan[4]):
            return p[1], p[2]
        spec = self.spec
        layout = fplan[3] if fplan is not None else layout_for(x, spec)
        if layout.kind not in ("tensor", "channel") or (layout.kind == "channel" and layout.axis != 1):
            return None
        rows_pc = layout.kind == "channel"
        n_rows = x.shape[1] if rows_pc else 1
        if kind == "observed":
            plan = BNQuantPlan(x.shape, AFFINE, rows_pc, spec.qmin, spec.qmax, clamp=clamp, observe=fplan[4])  # type: ignore[index]
        elif kind == "fixed":
            plan = BNQuantPlan(x.shape, AFFINE, rows_pc, spec.qmin, spec.qmax, rows_pc, clamp=clamp)
        elif kind == "pact":
            plan = BNQuantPlan(x.shape, PACT, False, 0, spec.qmax, clamp=clamp)
        else:
            assert q1 is not None and q2 is not None
            if q1.numel() != n_rows or q2.numel() not in (1, n_rows) or (q2.numel() == 1 and n_rows > 1 and q2.requires_grad):
                return None
            g = lsq_grad_factor(x.numel() // max(1, q1.numel()), spec.qmax)
            plan = BNQuantPlan(x.shape, AFFINE, rows_pc, spec.qmin, spec.qmax, q2.numel() > 1, SCALE_FLOOR, clamp, g)
        self.__dict__["_bnplan"] = (key, plan, layout, None if fplan is None else fplan[4])
        return plan, layout

    def _set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        # Module.__setattr__ re-registers a buffer on every assignment (~5 µs each, twice per
        # quantizer per step); with no buffer-registration hooks installed that amounts to
        # replacing the entry, which is done directly here.
        if _BUFFER_HOOKS is None or _BUFFER_HOOKS:
            self.lo, self.hi = lo, hi
        else:
            self._buffers["lo"], self._buffers["hi"] = lo, hi

    def _fused_plan(self, x: torch.Tensor, clamp: Bounds | None) -> tuple | None:  # type: ignore[type-arg]
        """``(shape, spec, clamp, layout, ObservePlan, search, shape tuple)`` for this input,
        worked out once per shape, spec and clamp (the layout rules cost more than the kernel
        on a small tensor); None for an estimator the kernels do not track."""
        p = self.__dict__.get("_fplan")
        spec = self.spec
        if p is not None and p[0] == x.shape and p[1] is spec and p[2] == clamp:
            return p
        est = spec.estimator
        search = est in SEARCH_ESTIMATORS
        if not search and est not in ("minmax", "ema"):
            return None
        layout = layout_for(x, spec)
        if layout.kind == "tensor":
            shape, axis = x.shape, None
        elif layout.kind == "channel":
            shape, axis = x.shape, layout.axis
        else:
            shape, axis = (layout.num_params(x.shape), max(1, x.numel()) // max(1, layout.num_params(x.shape)), 1), 0
        scheme = ASYMMETRIC if not spec.symmetric else (SYMMETRIC_SIGNED if spec.is_signed else SYMMETRIC_UNSIGNED)
        decay = spec.ema_decay if est != "minmax" else 0.0
        oplan = ObservePlan(shape, axis, spec.qmin, spec.qmax, scale_divisor(spec), scheme, decay, clamp)
        p = (x.shape, spec, clamp, layout, oplan, search, tuple(x.shape))
        self.__dict__["_fplan"] = p
        return p

    def _observed_qparams(self, layout: Layout) -> QParams:
        """``qparams_from_range`` of the observed range, kept while the range is unchanged:
        with the observers off (after the freeze) it is the same on every step, and
        its dozen small ops and two host syncs cost more than the quantizer itself."""
        lo, hi = self.lo, self.hi
        cached = self.__dict__.get("_qp_cache")
        # The cache holds lo and hi themselves, so a match by identity cannot be a new
        # tensor at a reused address; the version counters catch in-place updates and
        # the data pointers a swapped ``.data``.
        state = (lo._version, hi._version, lo.data_ptr(), hi.data_ptr())
        if cached is not None:
            c_lo, c_hi, c_state, c_layout, qp = cached
            if c_lo is lo and c_hi is hi and c_state == state and c_layout == layout:
                return qp
        qp = qparams_from_range(lo, hi, self.spec, layout)
        self.__dict__["_qp_cache"] = (lo, hi, state, layout, qp)
        return qp

    def init_learned(self) -> None:
        """Initialise LSQ's scale / PACT's clip from the observed range (after calibration)."""
        if self.ste in ("lsq", "pact") and self.lo.numel():
            self._init_learned(self._layout_for_shape(None), None)

    def _apply_fixed(self, x: torch.Tensor, qp: QParams, layout: Layout, ste: str, clamp: Bounds | None = None) -> torch.Tensor:
        scale, zp = qp.scale.to(x.device), qp.zero_point.to(x.device)
        if ste == "clipped" and fusable(x, scale):
            zf = zp.float()
            return _per_layout(x, layout, lambda v, axis: fake_quant_fused(v, scale, zf, qp.qmin, qp.qmax, axis, clamp=clamp))
        return _per_layout(_clamped(x, clamp), layout, lambda v, axis: fake_quant(v, scale, zp, qp.qmin, qp.qmax, axis, ste))

    def _lsq(self, x: torch.Tensor, layout: Layout, numel: int | None = None, clamp: Bounds | None = None) -> torch.Tensor:
        per = (numel or x.numel()) // max(1, self.scale.numel())
        g = lsq_grad_factor(per, self.spec.qmax)
        s, z, lo, hi = self.scale, self.zero_point, self.spec.qmin, self.spec.qmax
        if fusable(x, s, z):
            # The kernels apply the floor below themselves, gradient included.
            return _per_layout(x, layout, lambda v, axis: fake_quant_fused(v, s, z, lo, hi, axis, g, SCALE_FLOOR, clamp))
        # Keep the learned step positive: a step driven to <= 0 would divide by zero.
        s = s.abs().clamp(min=SCALE_FLOOR)
        return _per_layout(_clamped(x, clamp), layout, lambda v, axis: lsq_fake_quant(v, s, z, lo, hi, axis, g))

    def _lsq_planned(
        self, x: torch.Tensor, numel: int | None, clamp: Bounds | None, fold: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``_lsq`` on the kernels with its plan kept across calls (same shapes, spec, clamp
        and ``numel``); None where the general path must run (not fusable, rows layouts)."""
        s, z = self.scale, self.zero_point
        if not (x.is_cpu and x.dtype == torch.float32 and s.is_cpu and s.dtype == torch.float32 and z.is_cpu and z.dtype == torch.float32):
            return None
        p = self.__dict__.get("_lplan")
        if (
            p is None
            or p[0] != x.shape
            or p[1] is not self.spec
            or p[2] != clamp
            or p[3] != numel
            or p[4] != s.shape
            or p[5] != z.shape
            or p[6] != z.requires_grad
        ):
            if x.numel() == 0:
                return None
            layout = layout_for(x, self.spec)
            if layout.kind not in ("tensor", "channel"):
                return None
            axis = None if layout.kind == "tensor" else layout.axis
            g = lsq_grad_factor((numel or x.numel()) // max(1, s.numel()), self.spec.qmax)
            plan = FakeQuantPlan(x.shape, axis, s.shape, z.shape, z.requires_grad, self.spec.qmin, self.spec.qmax, g, SCALE_FLOOR, clamp)
            p = (x.shape, self.spec, clamp, numel, s.shape, z.shape, z.requires_grad, plan, tuple(x.shape))
            self.__dict__["_lplan"] = p
        if not enabled():
            return None
        self.__dict__["_last_shape"] = p[8]
        return fake_quant_planned(x, s, z, p[7], fold)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        # Observed and learned tensors are sized by the data they saw; a fresh module
        # holds empty placeholders, so take the checkpoint's shapes.
        for name in ("lo", "hi", "scale", "zero_point", "alpha"):
            key = prefix + name
            t = getattr(self, name, None)
            if key in state_dict and isinstance(t, torch.Tensor) and t.shape != state_dict[key].shape:
                t.data = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self.__dict__["_init_cache"] = None
        # Fractions found on other data or weights do not describe the loaded ones.
        self.clip_frac = torch.empty(0, device=self.lo.device)
        self._since_search = 0


def set_observe(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.observe = on


def set_fake_quant(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.enabled = on


def set_refresh_every(model: nn.Module, n: int) -> None:
    """How often every quantizer of ``model`` reruns its search estimator in QAT (see the module doc)."""
    n = _check_refresh_every(n)
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.refresh_every = n


def set_calibrating(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.calibrating = on
            if not on and not m.is_initialized:
                m.init_learned()
