"""FakeQuant: one tensor's quantizer as a module — range observer state, qparams, STE.

Observation and fake quantization switch on and off separately (PTQ calibration
observes without training; evaluation fake-quantizes without observing).

Range bookkeeping (``role``):
* ``weight``: the range is re-estimated from the current weights on every call.
* ``act``: a running range across batches: ``minmax`` keeps the running min/max
  (as torch's MinMaxObserver); ``ema`` and the batch estimators (``meanstd``,
  ``percentile``, ``mse``, ``entropy``) average per-batch ranges with decay ``ema_decay``.
"""
from __future__ import annotations

import torch
from torch import nn

from qatlab.quant import QParams, QuantSpec, estimate_range, layout_for, qparams_from_range, to_rows
from qatlab.quant.granularity import Layout, from_rows

from .ste import STE_KINDS, fake_quant, lsq_fake_quant, lsq_grad_factor, pact_fake_quant

ROLES = ("weight", "act")


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

    def _observe(self, x: torch.Tensor, layout: Layout) -> None:
        lo, hi = estimate_range(to_rows(x.detach(), layout), self.spec)
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
            return QParams(self.scale.detach().abs().clamp(min=1e-8).float().clone(), zp, self.spec.qmin, self.spec.qmax, layout)
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
    def forward(self, x: torch.Tensor, numel: int | None = None) -> torch.Tensor:
        """Fake-quantize ``x``. ``numel``: how many values ``x`` stands for in LSQ's
        gradient scale, where it is a max-pooled view of a larger tensor."""
        if not self.enabled and not self.observe:
            return x
        self._last_shape = tuple(x.shape)
        layout = layout_for(x, self.spec)
        learned_ready = self.ste in ("lsq", "pact") and self.is_initialized
        if self.observe and not learned_ready:
            self._observe(x, layout)
        if not self.enabled:
            return x
        if self.ste in ("lsq", "pact") and not self.is_initialized:
            if self.calibrating:
                qp = qparams_from_range(self.lo, self.hi, self.spec, layout)
                return self._apply_fixed(x, qp, layout, "clipped")
            self._init_learned(layout, x)
        if self.ste == "pact":
            return pact_fake_quant(x, self.alpha, self.spec.bits)
        if self.ste == "lsq":
            return self._lsq(x, layout, numel)
        qp = qparams_from_range(self.lo, self.hi, self.spec, layout)
        return self._apply_fixed(x, qp, layout, self.ste)

    def init_learned(self) -> None:
        """Initialise LSQ's scale / PACT's clip from the observed range (after calibration)."""
        if self.ste in ("lsq", "pact") and self.lo.numel():
            self._init_learned(self._layout_for_shape(None), None)

    def _apply_fixed(self, x: torch.Tensor, qp: QParams, layout: Layout, ste: str) -> torch.Tensor:
        scale, zp = qp.scale.to(x.device), qp.zero_point.to(x.device)
        if layout.kind == "tensor":
            return fake_quant(x, scale, zp, qp.qmin, qp.qmax, None, ste)
        if layout.kind == "channel":
            return fake_quant(x, scale, zp, qp.qmin, qp.qmax, layout.axis, ste)
        rows = fake_quant(to_rows(x, layout), scale, zp, qp.qmin, qp.qmax, 0, ste)
        return from_rows(rows, x.shape, layout)

    def _lsq(self, x: torch.Tensor, layout: Layout, numel: int | None = None) -> torch.Tensor:
        per = (numel or x.numel()) // max(1, self.scale.numel())
        g = lsq_grad_factor(per, self.spec.qmax)
        s, z, lo, hi = self.scale, self.zero_point, self.spec.qmin, self.spec.qmax
        # Keep the learned step positive: a step driven to <= 0 would divide by zero.
        s = s.abs().clamp(min=1e-8)
        if layout.kind == "tensor":
            return lsq_fake_quant(x, s, z, lo, hi, None, g)
        if layout.kind == "channel":
            return lsq_fake_quant(x, s, z, lo, hi, layout.axis, g)
        return from_rows(lsq_fake_quant(to_rows(x, layout), s, z, lo, hi, 0, g), x.shape, layout)


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


def set_observe(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.observe = on


def set_fake_quant(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.enabled = on


def set_calibrating(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.calibrating = on
            if not on and not m.is_initialized:
                m.init_learned()
