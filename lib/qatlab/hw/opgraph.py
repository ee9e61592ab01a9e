"""The ops of an IntModel as both hardware simulators see them.

Every op of the model gets one :class:`OpInfo`: its role on the hardware, the shapes
and qparams of what it reads and writes, and the work counts the cost models need.
Roles:

* ``gemm`` — conv with ``groups == 1`` and linear: the systolic array / an MVAU;
* ``grouped`` — conv with ``groups > 1`` (``depthwise`` when every group has one
  input channel): one GEMM per group on the array, a VVAU on the FPGA;
* ``vector`` — quantize, add, mul, relu, clamp, lut, avgpool, maxpool, mean, cat:
  elementwise and reduction ops for the ASIC's vector unit / FINN's streaming units;
* ``passthrough`` — flatten, reshape, permute, slice: address re-interpretation, no
  arithmetic.

An op kind outside these is an :class:`UnsupportedOpError` (never silently skipped),
so a report either lists every op or refuses the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GEMM_KINDS = ("conv", "linear")
VECTOR_KINDS = ("quantize", "add", "mul", "relu", "clamp", "lut", "avgpool", "maxpool", "mean", "cat")
PASSTHROUGH_KINDS = ("flatten", "reshape", "permute", "slice")
ROLES = ("gemm", "grouped", "vector", "passthrough")


class UnsupportedOpError(ValueError):
    """An IntModel op the hardware models cannot cost; the message names the op and why."""


def _prod(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape)) if shape else 1


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def adaptive_bins(size: int, out: int) -> list[int]:
    """PyTorch's adaptive pooling bin sizes along one axis: ``[floor(i·n/o), ceil((i+1)·n/o))``."""
    if size < 1 or out < 1:
        raise ValueError(f"adaptive pooling needs positive sizes, got input {size}, output {out}")
    return [-(-((i + 1) * size) // out) - (i * size) // out for i in range(out)]


@dataclass(frozen=True)
class OpInfo:
    """One IntModel op with what the cost models need to know about it."""

    op: Any  # qatlab.intmodel.IntOp
    role: str
    in_shapes: tuple[tuple[int, ...], ...]  # without the batch
    in_qs: tuple[Any, ...]  # ActQ of each input (None: the model's float input)
    out_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return str(self.op.name)

    @property
    def kind(self) -> str:
        return str(self.op.kind)

    @property
    def groups(self) -> int:
        return int(self.op.attrs.get("groups", 1)) if self.kind == "conv" else 1

    @property
    def depthwise(self) -> bool:
        return self.role == "grouped" and self.in_shapes[0][0] == self.groups

    @property
    def out_elems(self) -> int:
        return _prod(self.out_shape)

    def in_elems(self, i: int = 0) -> int:
        return _prod(self.in_shapes[i])

    @property
    def in_bits(self) -> tuple[int, ...]:
        """Bits per element of each input (32 for the float input of ``quantize``)."""
        return tuple(32 if q is None else int(q.bits) for q in self.in_qs)

    @property
    def out_bits(self) -> int:
        return int(self.op.out_q.bits)

    def requantized_inputs(self) -> tuple[int, ...]:
        """Indices of a ``cat``'s inputs that need requantization (qparams unlike the output's).

        An input already on the output's grid is an identity copy: its producer can
        write it straight into its slot of the output, so it costs no work.
        """
        if self.kind != "cat":
            return ()
        oq = self.op.out_q
        return tuple(
            i
            for i, q in enumerate(self.in_qs)
            if q is None or (q.scale, q.zero_point, q.qmin, q.qmax) != (oq.scale, oq.zero_point, oq.qmin, oq.qmax)
        )

    def reduction_taps(self) -> int:
        """Input taps a pooling or mean op reads over the whole op (one batch item).

        Window pools read ``kernel_h · kernel_w`` taps per output, padding taps included
        (the window is walked whole); adaptive pools the sum of their (uneven) bins;
        ``mean`` every input element once. 0 for other kinds.
        """
        a = self.op.attrs
        if self.kind in ("avgpool", "maxpool"):
            if self.kind == "avgpool" and a.get("adaptive"):
                c, h, w = self.in_shapes[0]
                oh, ow = _pair(a["output_size"])
                return c * sum(adaptive_bins(h, oh)) * sum(adaptive_bins(w, ow))
            kh, kw = _pair(a["kernel"])
            return self.out_elems * kh * kw
        if self.kind == "mean":
            return self.in_elems(0)
        return 0

    def window(self) -> tuple[int, int]:
        """A window pool's kernel (an adaptive pool's largest bin)."""
        a = self.op.attrs
        if a.get("adaptive"):
            _, h, w = self.in_shapes[0]
            oh, ow = _pair(a["output_size"])
            return max(adaptive_bins(h, oh)), max(adaptive_bins(w, ow))
        return _pair(a["kernel"])


def _role(op: Any) -> str:
    if op.kind in GEMM_KINDS:
        return "grouped" if op.kind == "conv" and int(op.attrs.get("groups", 1)) > 1 else "gemm"
    if op.kind in VECTOR_KINDS:
        return "vector"
    if op.kind in PASSTHROUGH_KINDS:
        return "passthrough"
    raise UnsupportedOpError(
        f"op {op.name!r}: kind {op.kind!r} has no hardware cost model (known: {', '.join(GEMM_KINDS + VECTOR_KINDS + PASSTHROUGH_KINDS)})"
    )


def op_infos(model: Any) -> list[OpInfo]:
    """One :class:`OpInfo` per op of ``model`` (a :class:`qatlab.intmodel.IntModel`), in order."""
    shapes: dict[str, tuple[int, ...]] = {model.input_name: tuple(int(d) for d in model.input_shape)}
    qs: dict[str, Any] = {model.input_name: None}
    out: list[OpInfo] = []
    for op in model.ops:
        role = _role(op)
        missing = [i for i in op.inputs if i not in shapes]
        if missing:
            raise UnsupportedOpError(f"op {op.name!r} reads {', '.join(map(repr, missing))} before any op writes it")
        if "out_shape" not in op.attrs:
            raise UnsupportedOpError(f"op {op.name!r} ({op.kind}) lacks attr 'out_shape'")
        oshape = tuple(int(d) for d in op.attrs["out_shape"])
        if any(d < 1 for d in oshape):
            raise UnsupportedOpError(f"op {op.name!r}: out_shape {oshape} has a non-positive dimension")
        ins = tuple(shapes[i] for i in op.inputs)
        if op.kind == "conv" and len(ins[0]) != 3:
            raise UnsupportedOpError(f"op {op.name!r}: a conv reads a [C, H, W] input, got shape {ins[0]}")
        if role == "grouped" and ins[0][0] % int(op.attrs["groups"]):
            raise UnsupportedOpError(f"op {op.name!r}: {ins[0][0]} input channels do not split into {op.attrs['groups']} groups")
        if op.kind in ("avgpool", "maxpool") and len(ins[0]) != 3:
            raise UnsupportedOpError(f"op {op.name!r}: a pool reads a [C, H, W] input, got shape {ins[0]}")
        out.append(OpInfo(op, role, ins, tuple(qs[i] for i in op.inputs), oshape))
        shapes[op.output] = oshape
        qs[op.output] = op.out_q
    return out


def stream_dims(shape: tuple[int, ...]) -> tuple[int, int]:
    """(pixels, channels) of a value as a stream: NCHW's C is the channel axis (the
    first axis without the batch), everything after it is pixels; a [F] vector is one
    pixel of F channels."""
    if not shape:
        return 1, 1
    return _prod(shape[1:]), int(shape[0])
