"""IntModel: a network as a list of integer ops — the single source of truth for every backend.

An op reads named values and writes one. Values are integer codes (int32 tensors)
with per-tensor QParams; only the first op sees floats (it quantizes the input)
and the result is the last value's codes (``dequantize_output`` gives logits).

Saved as a versioned dict of plain tensors and strings (``torch.save``), which
loads with ``torch.load(weights_only=True)``. Version 2 added the kinds ``clamp``,
``lut``, ``mul``, ``cat``, ``mean``, ``reshape``, ``permute``, ``slice``, the
``clamp`` attr of conv/linear/add/mul and adaptive average pooling; version-1 files
load unchanged (their ops are a subset).

Op kinds (codes ``q`` of input ``x`` with qparams ``(s_x, z_x)``; output ``(s_o, z_o)``;
``round(v · M)`` is the model's rounding: float64 round-half-even of the product with
``multiplier``, or gemmlowp ``MultiplyByQuantizedMultiplier`` with ``fixed_multiplier``
and ``shift``; ``sat`` clamps to ``[out_q.qmin, out_q.qmax]``):

``quantize``  float input -> codes, ``clamp(round(x · (1/s)) + z)`` in float32.
``conv``      attrs stride/padding/dilation/groups/kernel; tensors weight, bias,
              multiplier, fixed_multiplier, shift (per output channel).
``linear``    tensors as conv.
``add``       tensors multiplier_a/b, fixed_multiplier_a/b, shift_a/b, real_a/b.
``avgpool``   attrs kernel/stride/padding/count with scalar attrs multiplier,
              fixed_multiplier, shift, pre_shift (see below); or, adaptive (``adaptive: True``,
              ``output_size: [oh, ow]``, PyTorch's uneven bins
              ``[floor(i·H/oh), ceil((i+1)·H/oh))``) with tensors ``count``
              (int32 [oh, ow], each bin's size), ``multiplier`` (float64 [oh, ow] =
              s_x/(count·s_o)), ``fixed_multiplier`` and ``shift`` (int32 [oh, ow]),
              ``pre_shift`` (int32 [1]):
              ``y = sat(round(Σ_bin (q − z_x) · M[i, j]) + z_o)``.
``maxpool``   attrs kernel/stride/padding/dilation/ceil_mode; out_q == input's.
``relu``      ``max(q, z)``; out_q == input's.
``flatten``   to [N, F]; out_q == input's.
``clamp``     attrs lo, hi (codes): ``min(max(q, lo), hi)``; out_q == input's.
``lut``       attrs fn; tensor ``table`` int32 [in.qmax − in.qmin + 1]:
              ``y = table[q − in.qmin]`` (inputs of at most 8 bits).
``mul``       two inputs (torch broadcasting); tensors multiplier, fixed_multiplier,
              shift, pre_shift [1] with M = s_a·s_b/s_o: ``y = sat(round((qa − za)(qb − zb)·M) + z_o)``.
``cat``       n inputs, attrs axis (batch = 0); tensors ``multiplier_i``,
              ``fixed_multiplier_i``, ``shift_i``, ``pre_shift_i`` [1] per input i with M_i = s_i/s_o:
              ``y_i = sat(round((q_i − z_i)·M_i) + z_o)``, then concatenated.
``mean``      attrs dims (full-tensor axes), keepdim, count; tensors multiplier,
              fixed_multiplier, shift, pre_shift [1] with M = s_x/(count·s_o):
              ``y = sat(round(Σ (q − z_x)·M) + z_o)``.

Fixed rounding of ``mul``, ``cat``, ``mean`` and ``avgpool``: the small integer
``v`` they rescale (a product of centred codes, a centred code, a sum of them) is
widened first, as TFLite widens an add's inputs: with an int32 tensor
``pre_shift{suffix}`` [1] = L (the window pool: an int attr ``pre_shift``) the result is
``MultiplyByQuantizedMultiplier(v · 2^L, fixed_multiplier, shift)`` and the stored
pair encodes ``M · 2^−L`` (``shift`` is M's own shift minus L). ``convert`` picks
``L = 31 − bit_length(B)`` from the bound ``|v| ≤ B`` of :func:`rescale_bounds` (so
``v · 2^L`` is an int32), capped so that no right shift exceeds 31; the result then
rounds ``v · M`` once, as float rounding does, but for half-way ties (broken away
from zero) and near-ties within the multiplier's 2^−31 error. Without
``pre_shift`` (files written before it) L is 0. ``validate`` refuses a fixed model
whose ``B · 2^L`` leaves int32.
``reshape``   attrs out_shape; ``permute`` attrs dims (dims[0] == 0); ``slice``
              attrs axis, start, end: pass-through, out_q == input's.

conv, linear, add and mul may carry ``relu: True`` (lower bound z_o) and
``clamp: [lo, hi]`` (codes, applied after requantization, before ``sat``).
Every op carries ``out_shape`` (without the batch).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qatlab.atomic import atomic_path

FORMAT = "qatlab.intmodel"
VERSION = 2
READABLE_VERSIONS = (1, 2)
OP_KINDS = (
    "quantize",
    "conv",
    "linear",
    "add",
    "avgpool",
    "maxpool",
    "relu",
    "flatten",
    "clamp",
    "lut",
    "mul",
    "cat",
    "mean",
    "reshape",
    "permute",
    "slice",
)
LUT_FNS = ("hardswish", "hardsigmoid", "silu", "sigmoid", "tanh", "gelu")
_REQUANT = ("multiplier", "fixed_multiplier", "shift")
# How many inputs each kind reads (None: one or more).
_ARITY: dict[str, int | None] = {"add": 2, "mul": 2, "cat": None}


class IntModelFormatError(ValueError):
    """A file that is not a readable IntModel (corrupted, truncated, foreign or newer)."""


@dataclass(frozen=True)
class ActQ:
    """Per-tensor activation qparams: ``x ≈ scale · (q − zero_point)``, q in [qmin, qmax]."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @property
    def bits(self) -> int:
        return int(self.qmax - self.qmin).bit_length()

    @property
    def span(self) -> int:
        """The largest ``|q − zero_point|`` over codes q in [qmin, qmax]."""
        return max(self.qmax - self.zero_point, self.zero_point - self.qmin, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point, "qmin": self.qmin, "qmax": self.qmax}


def rescale_bounds(kind: str, in_qs: list[ActQ], count: int = 1) -> list[int]:
    """Bounds on ``|v|``, the integer a ``mul``, ``cat`` (one per input), ``mean`` or
    ``avgpool`` (``count``: its window, or an adaptive pool's largest bin) multiplies
    by M, from the input codes' ranges: ``|(qa − za)(qb − zb)| ≤ span_a · span_b``, ``|q_i − z_i| ≤ span_i``,
    and a sum of ``count`` centred codes ``≤ count · span``. The fixed-point pre-shift
    (``qatlab.quant.requant.pre_shift_multiplier``) is chosen from these."""
    if kind == "mul":
        return [in_qs[0].span * in_qs[1].span]
    if kind == "cat":
        return [q.span for q in in_qs]
    if kind in ("mean", "avgpool"):
        return [count * in_qs[0].span]
    raise ValueError(f"op kind {kind!r} has no pre-shifted requantization")


def pre_shift_suffixes(op: "IntOp") -> list[str]:
    """The name suffixes of the op's pre-shifted requantizations (one per bound of
    :func:`rescale_bounds`); empty for other kinds."""
    if op.kind in ("mul", "mean", "avgpool"):
        return [""]
    if op.kind == "cat":
        return [f"_{i}" for i in range(len(op.inputs))]
    return []


@dataclass
class IntOp:
    """One integer op.

    ``tensors`` of a conv/linear: ``weight`` (int8 codes, intN in an int8 container,
    or int16 above 8 bits), ``bias`` (int32, on the accumulator's scale s_x·s_w),
    ``multiplier`` (float64 M = s_x·s_w/s_y per output channel), ``fixed_multiplier``
    (int32) and ``shift`` (int32). ``attrs`` holds geometry and the layer's workload.
    """

    kind: str
    name: str
    inputs: list[str]
    output: str
    out_q: ActQ
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "inputs": list(self.inputs),
            "output": self.output,
            "out_q": self.out_q.to_dict(),
            "attrs": _plain(self.attrs),
            "tensors": dict(self.tensors),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IntOp":
        attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in d["attrs"].items()}
        return cls(d["kind"], d["name"], list(d["inputs"]), d["output"], ActQ(**d["out_q"]), attrs, dict(d["tensors"]))


@dataclass
class IntModel:
    ops: list[IntOp]
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]  # (C, H, W) or (features,), without the batch
    rounding: str = "float"  # requantization path: float (round half even) | fixed (gemmlowp)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_q(self) -> ActQ:
        return self.ops[0].out_q

    @property
    def output_q(self) -> ActQ:
        return next(op.out_q for op in reversed(self.ops) if op.output == self.output_name)

    def compute_ops(self) -> list[IntOp]:
        return [op for op in self.ops if op.kind in ("conv", "linear")]

    def summary(self) -> str:
        lines = [f"IntModel ({len(self.ops)} ops, rounding={self.rounding}, input {self.input_shape})"]
        for op in self.ops:
            w = op.tensors.get("weight")
            wdesc = f" w{op.attrs.get('w_bits')}b {tuple(w.shape)}" if w is not None else ""
            lines.append(f"  {op.kind:8} {op.name:24} {','.join(op.inputs)} -> {op.output}{wdesc} a{op.out_q.bits}b")
        return "\n".join(lines)

    # ---- persistence ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "ops": [op.to_dict() for op in self.ops],
            "input_name": self.input_name,
            "output_name": self.output_name,
            "input_shape": list(self.input_shape),
            "rounding": self.rounding,
            "meta": _plain(self.meta),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a temp file in the same folder, then rename."""
        with atomic_path(path, mkdir=False) as tmp:
            torch.save(self.to_dict(), tmp)

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> "IntModel":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise IntModelFormatError(f"{source}: not a qatlab IntModel file (format tag missing)")
        if d.get("version") not in READABLE_VERSIONS:
            raise IntModelFormatError(
                f"{source}: IntModel format version {d.get('version')!r}; this qatlab reads versions {', '.join(map(str, READABLE_VERSIONS))}"
            )
        try:
            ops = [IntOp.from_dict(o) for o in d["ops"]]
            m = cls(ops, d["input_name"], d["output_name"], tuple(d["input_shape"]), d["rounding"], dict(d["meta"]))
        except (KeyError, TypeError) as e:
            raise IntModelFormatError(f"{source}: IntModel file is missing or has a malformed field: {e}") from e
        m.validate(source)
        return m

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "IntModel":
        p = Path(path)
        try:
            d = torch.load(p, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # torch raises many kinds for a damaged zip/pickle
            raise IntModelFormatError(f"{p}: cannot read IntModel file (corrupted, truncated or foreign): {e}") from e
        return cls.from_dict(d, str(p))

    def validate(self, source: str = "<model>") -> None:
        seen = {self.input_name}
        q_of: dict[str, ActQ] = {}
        if self.rounding not in ("float", "fixed"):
            raise IntModelFormatError(f"{source}: rounding {self.rounding!r} is unknown")
        for op in self.ops:
            if op.kind not in OP_KINDS:
                raise IntModelFormatError(f"{source}: op {op.name!r} has unknown kind {op.kind!r}")
            for i in op.inputs:
                if i not in seen:
                    raise IntModelFormatError(f"{source}: op {op.name!r} reads {i!r} before it is written")
            _validate_op(op, source)
            if self.rounding == "fixed" and pre_shift_suffixes(op):
                if any(i not in q_of for i in op.inputs):
                    raise IntModelFormatError(f"{source}: op {op.name!r} ({op.kind}) reads the float input; it needs codes")
                _validate_pre_shift(op, [q_of[i] for i in op.inputs], source)
            seen.add(op.output)
            q_of[op.output] = op.out_q
        if self.output_name not in seen:
            raise IntModelFormatError(f"{source}: output {self.output_name!r} is never written")


def _validate_op(op: IntOp, source: str) -> None:
    """The attrs and tensors each kind's executors read are present and consistent."""
    where = f"{source}: op {op.name!r} ({op.kind})"

    def need_tensors(*names: str) -> None:
        for t in names:
            if t not in op.tensors:
                raise IntModelFormatError(f"{where} lacks tensor {t!r}")

    def need_attrs(*names: str) -> None:
        for a in names:
            if a not in op.attrs:
                raise IntModelFormatError(f"{where} lacks attr {a!r}")

    arity = _ARITY.get(op.kind, 1)
    if op.kind != "quantize" and (len(op.inputs) != arity if arity is not None else not op.inputs):
        raise IntModelFormatError(f"{where} reads {len(op.inputs)} inputs; expected {arity if arity is not None else 'one or more'}")
    k = op.kind
    if k in ("conv", "linear"):
        need_tensors("weight", "bias", *_REQUANT)
    elif k in ("mul", "mean"):
        need_tensors(*_REQUANT)
        if k == "mean":
            need_attrs("dims", "keepdim", "count")
            if 0 in tuple(op.attrs["dims"]):
                raise IntModelFormatError(f"{where} averages over the batch axis")
    elif k == "cat":
        need_attrs("axis")
        need_tensors(*(f"{t}_{i}" for i in range(len(op.inputs)) for t in _REQUANT))
        if int(op.attrs["axis"]) == 0:
            raise IntModelFormatError(f"{where} concatenates along the batch axis")
    elif k == "lut":
        need_attrs("fn")
        need_tensors("table")
        if op.attrs["fn"] not in LUT_FNS:
            raise IntModelFormatError(f"{where} has unknown fn {op.attrs['fn']!r}; expected one of {', '.join(LUT_FNS)}")
    elif k == "clamp":
        need_attrs("lo", "hi")
        if int(op.attrs["lo"]) > int(op.attrs["hi"]):
            raise IntModelFormatError(f"{where} has lo > hi")
    elif k == "avgpool" and op.attrs.get("adaptive"):
        need_attrs("output_size")
        need_tensors("count", *_REQUANT)
    elif k == "reshape":
        need_attrs("out_shape")
    elif k == "permute":
        need_attrs("dims")
        dims = [int(d) for d in op.attrs["dims"]]
        if sorted(dims) != list(range(len(dims))) or dims[0] != 0:
            raise IntModelFormatError(f"{where} dims {dims} is not a permutation that keeps the batch axis first")
    elif k == "slice":
        need_attrs("axis", "start", "end")
        if int(op.attrs["axis"]) == 0:
            raise IntModelFormatError(f"{where} slices the batch axis")
    if "clamp" in op.attrs and op.attrs["clamp"] is not None:
        lo, hi = op.attrs["clamp"]
        if int(lo) > int(hi):
            raise IntModelFormatError(f"{where} clamp lo > hi")


def _validate_pre_shift(op: IntOp, in_qs: list[ActQ], source: str) -> None:
    """Fixed rounding: every pre-shifted value ``v · 2^pre_shift`` fits int32, as the
    fixed-point multiply takes it (a file without ``pre_shift`` shifts by 0)."""
    count = 1
    adaptive = op.kind == "avgpool" and op.attrs.get("adaptive")
    if adaptive:
        count = int(op.tensors["count"].max()) if op.tensors["count"].numel() else 0
    elif op.kind == "mean" or "count" in op.attrs:
        count = int(op.attrs["count"])
    elif op.kind == "avgpool":
        if "kernel" not in op.attrs:
            raise IntModelFormatError(f"{source}: op {op.name!r} ({op.kind}) lacks attr 'count'")
        count = math.prod(int(k) for k in op.attrs["kernel"])
    for suffix, bound in zip(pre_shift_suffixes(op), rescale_bounds(op.kind, in_qs, count)):
        # The window pool keeps its fixed-point form in scalar attrs; the others in tensors.
        if op.kind == "avgpool" and not adaptive:
            t = torch.tensor([op.attrs["pre_shift"]]) if "pre_shift" in op.attrs else None
        else:
            t = op.tensors.get(f"pre_shift{suffix}")
        pre = int(t.reshape(-1)[0]) if t is not None else 0
        if t is not None and (t.numel() != 1 or not 0 <= pre <= 31):
            raise IntModelFormatError(f"{source}: op {op.name!r} ({op.kind}) pre_shift{suffix} must be one shift in [0, 31]")
        if bound << pre > 2**31 - 1:
            raise IntModelFormatError(
                f"{source}: op {op.name!r} ({op.kind}) multiplies values up to {bound} shifted left by {pre} "
                "in fixed point, which leaves int32; use rounding='float' or narrower activations"
            )


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    # weights_only loading accepts lists, not tuples-of-anything; keep values plain.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
