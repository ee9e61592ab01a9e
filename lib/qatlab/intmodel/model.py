"""IntModel: a network as a list of integer ops — the single source of truth for every backend.

An op reads named values and writes one. Values are integer codes (int32 tensors)
with per-tensor QParams; only the first op sees floats (it quantizes the input)
and the result is the last value's codes (``dequantize_output`` gives logits).

Saved as a versioned dict of plain tensors and strings (``torch.save``), which
loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qatlab.atomic import atomic_path

FORMAT = "qatlab.intmodel"
VERSION = 1
OP_KINDS = ("quantize", "conv", "linear", "add", "avgpool", "maxpool", "relu", "flatten")


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

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point, "qmin": self.qmin, "qmax": self.qmax}


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
        if d.get("version") != VERSION:
            raise IntModelFormatError(f"{source}: IntModel format version {d.get('version')!r}; this qatlab reads version {VERSION}")
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
        for op in self.ops:
            if op.kind not in OP_KINDS:
                raise IntModelFormatError(f"{source}: op {op.name!r} has unknown kind {op.kind!r}")
            for i in op.inputs:
                if i not in seen:
                    raise IntModelFormatError(f"{source}: op {op.name!r} reads {i!r} before it is written")
            if op.kind in ("conv", "linear"):
                for t in ("weight", "bias", "multiplier", "fixed_multiplier", "shift"):
                    if t not in op.tensors:
                        raise IntModelFormatError(f"{source}: op {op.name!r} lacks tensor {t!r}")
            seen.add(op.output)
        if self.output_name not in seen:
            raise IntModelFormatError(f"{source}: output {self.output_name!r} is never written")
        if self.rounding not in ("float", "fixed"):
            raise IntModelFormatError(f"{source}: rounding {self.rounding!r} is unknown")


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    # weights_only loading accepts lists, not tuples-of-anything; keep values plain.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
