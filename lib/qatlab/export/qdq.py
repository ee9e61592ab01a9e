"""The IntModel as an ONNX graph with QuantizeLinear/DequantizeLinear (QDQ) nodes.

Every value of the IntModel becomes an integer tensor (the output of a
QuantizeLinear, holding exactly the IntModel's codes) and its float twin (the
DequantizeLinear of it). Every op reads float twins and ends in a QuantizeLinear
with the IntModel's output qparams, the standard QDQ form::

    DQ(x codes) ─┐
    DQ(int8 W, per-channel scale, axis 0) ─┼─ Conv ─ [Relu] ─ Q(s_y, z_y) ─ [Clip] ─ DQ ─ …
    DQ(int32 bias, scale s_x·s_w) ─┘

ONNX Runtime fuses each DQ→op→Q group into an integer kernel (QLinearConv, QGemm,
QLinearAdd, QLinearAveragePool…), so it computes the same int32 accumulators as the
CPU reference and differs only in how it requantizes (float32, see ``runtime.py``).

Below 8 bits there are two forms (``low_bit``):

* ``"clip"`` (default): codes live in 8-bit containers (uint8/int8) and an integer
  ``Clip(qmin, qmax)`` follows the QuantizeLinear (Q alone saturates only to its
  type's range). Any width 2–8 works, at opset 13, and ONNX Runtime still fuses the
  DQ→op→Q groups into its 8-bit integer kernels; the Clip runs on the uint8 codes.
* ``"int4"``: the INT4/UINT4 types of opset 21, used where a value's range is
  exactly the 4-bit type's range (weights: any range inside [-8, 7]); other widths
  fall back to 8 bits. ONNX Runtime 1.32 executes these graphs, but has no 4-bit
  integer conv/gemm kernel: it dequantizes and runs Conv/Gemm in float32, which
  rounds differently from the reference; its QDQ clean-up also turns
  DQ(uint4)→MaxPool→Q(uint4) into a uint4 MaxPool it cannot run (so max-pool
  outputs stay uint8 here), and its Python API cannot return uint4 tensors.

``clip`` is the default because it is the form ONNX Runtime runs as integers, for
every width, and so the one that reproduces the reference (tests/test_export.py).

The IntModel's output clamp ``[lo, hi]`` (``lo`` = the zero point after a fused ReLU,
else qmin; a fused ``clamp`` such as ReLU6 narrows both, see :func:`out_bounds`) is
Q's own saturation where it equals the type's range (a ``Relu`` before Q states a
ReLU whose zero point is the type minimum; ONNX Runtime drops it when it fuses), else
an integer ``Clip(lo, hi)`` after Q — exactly the reference's clamp, and it keeps the
group fusable (a float Clip before Q would not). 4-bit codes take a float ``Relu``, or
float ``Max``/``Min`` at the bounds' real values (ORT has no 4-bit Clip).

Above 8 bits, codes live in 16-bit containers (opset 21), clamped by a float ``Clip``
at the real values of ``lo`` and ``hi`` before Q (ONNX Runtime cannot Clip 16-bit
integers); ORT runs those layers in float.

The other kinds:

* ``mul``: DQ→Mul→Q (QLinearMul, broadcasting as torch); ``cat``: DQ→Concat→Q
  (QLinearConcat); depthwise/grouped convs: Conv's ``group`` (QLinearConv).
* ``lut``: ``Gather`` of an integer table by the codes (Cast to int32): exact.
* ``clamp``, ``reshape``, ``permute`` (Transpose), ``slice``: integer ops on the codes,
  exact (in the int4 form Reshape/Slice move DQ'd floats into 8-bit codes instead).
* ``mean`` over H, W of a 4-D value and adaptive pools to 1×1: GlobalAveragePool
  (QLinearGlobalAveragePool). Other means and adaptive pools (PyTorch's uneven bins)
  have no quantized ONNX op; they sum the centred codes in float64 (ReduceSum, or two
  MatMuls with 0/1 bin matrices: integer sums, exact) and requantize in float64 with
  the op's own multipliers (Mul, Round half to even, Add z, Clip, Cast), which is the
  IntModel's float rounding bit for bit. A ``fixed`` IntModel widens those sums by
  ``2^pre_shift`` before its fixed-point multiply, so this form is its rounding too,
  but for half-way ties (fixed point breaks them away from zero) and near-ties
  within the fixed multiplier's 2^−31 error.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import qatlab
from qatlab.atomic import write_bytes
from qatlab.intmodel import ActQ, IntModel, IntOp, convert

from .errors import ExportError, UnsupportedLayerError
from .names import BATCH_DIM, CODES_NAME, INPUT_NAME, LOGITS_NAME
from .session import run_onnx

LOW_BIT_FORMS = ("clip", "int4")
MIN_OPSET = 13  # per-axis (per-channel) QuantizeLinear/DequantizeLinear
NARROW_OPSET = 21  # INT4/UINT4 and 16-bit Q/DQ

# ONNX integer types for codes, narrowest first, with their (min, max).
_RANGES: dict[int, tuple[int, int]] = {
    TensorProto.UINT4: (0, 15),
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT8: (0, 255),
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT16: (-32768, 32767),
}
_NUMPY = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8, TensorProto.UINT16: np.uint16, TensorProto.INT16: np.int16}
_SUPPORTED_KINDS = (
    "quantize", "conv", "linear", "add", "avgpool", "maxpool", "relu", "flatten",
    "clamp", "lut", "mul", "cat", "mean", "reshape", "permute", "slice",
)  # fmt: skip


def out_bounds(op: IntOp) -> tuple[int, int]:
    """The range ``[lo, hi]`` an op's requantized codes end in.

    The IntModel applies a fused ``clamp`` ``[c_lo, c_hi]`` to the requantized codes,
    then its ReLU and output range ``[z or qmin, qmax]``. Two clamps in a row are one
    clamp, whose ends are the images of the extreme inputs.
    """
    q = op.out_q
    lo = q.zero_point if op.attrs.get("relu") else q.qmin
    c = op.attrs.get("clamp")
    if c is None:
        return lo, q.qmax
    if len(c) != 2:
        raise UnsupportedLayerError(f"layer {op.name} ({op.kind}): clamp must be [lo, hi], got {c!r}")
    c_lo = q.qmin if c[0] is None else int(c[0])
    c_hi = q.qmax if c[1] is None else int(c[1])
    if c_lo > c_hi:
        raise UnsupportedLayerError(f"layer {op.name} ({op.kind}): clamp [{c_lo}, {c_hi}] is empty")
    return min(max(c_lo, lo), q.qmax), min(max(c_hi, lo), q.qmax)


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins along one axis: [floor(i·n/o), ceil((i+1)·n/o))."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


@dataclass(frozen=True)
class ExportInfo:
    """What was written: enough to cite the export in a report."""

    path: str | None
    opset: int
    low_bit: str
    rounding: str  # the IntModel's requantization rounding (ORT always rounds in float32)
    nodes: dict[str, int]  # op type -> count
    code_types: dict[str, int] = field(default_factory=dict)  # ONNX code type name -> number of values
    clips: int = 0  # integer Clip nodes (sub-range or ReLU clamps)
    size_bytes: int = 0


def _type_name(t: int) -> str:
    return TensorProto.DataType.Name(t)


class _Builder:
    def __init__(self, model: IntModel, opset: int | None, low_bit: str, expose_codes: bool) -> None:
        if low_bit not in LOW_BIT_FORMS:
            raise ExportError(f"low_bit {low_bit!r} is unknown; expected one of {', '.join(LOW_BIT_FORMS)}")
        self.m = model
        self.low_bit = low_bit
        self.expose_codes = expose_codes
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.float_of: dict[str, str] = {}  # IntModel value -> float (DQ output) tensor
        self.codes_of: dict[str, str] = {}  # IntModel value -> integer codes tensor
        self.code_type: dict[str, int] = {}
        self.shape_of: dict[str, tuple[int, ...]] = {model.input_name: tuple(model.input_shape)}
        self.q_of: dict[str, ActQ] = {}
        self.qparam_names: dict[tuple[float, int, int], tuple[str, str]] = {}
        self.needs_opset: list[tuple[int, str]] = [(MIN_OPSET, "per-channel QDQ")]
        self.requested_opset = opset
        self.clips = 0
        self._n = 0

    # ---- small helpers ------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}__{self._n}"

    def init(self, name: str, arr: np.ndarray | None = None, *, dtype: int | None = None, vals: np.ndarray | None = None) -> str:
        if dtype in (TensorProto.INT4, TensorProto.UINT4) and vals is not None:
            # onnx packs 4-bit values two per byte from a plain int array.
            self.inits.append(helper.make_tensor(name, dtype, list(vals.shape), vals.astype(np.int32).ravel().tolist()))
        else:
            if arr is None:
                raise ExportError(f"internal: initializer {name!r} has no values")
            self.inits.append(numpy_helper.from_array(np.array(arr, order="C"), name))  # (ascontiguousarray would make scalars 1-D)
        return name

    def node(self, op_type: str, inputs: list[str], output: str | None = None, name: str | None = None, **attrs: Any) -> str:
        out = output or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name or out, **attrs))
        return out

    def container(self, q: ActQ, who: str, four_bit_ok: bool = True) -> int:
        """The ONNX type that holds codes in [qmin, qmax] (see the module doc for the forms)."""
        if self.low_bit == "int4" and four_bit_ok:
            for t in (TensorProto.UINT4, TensorProto.INT4):
                if _RANGES[t] == (q.qmin, q.qmax):
                    self.needs_opset.append((NARROW_OPSET, f"{who}: 4-bit codes"))
                    return t
        for t in (TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT16):
            lo, hi = _RANGES[t]
            if lo <= q.qmin and q.qmax <= hi:
                if t in (TensorProto.UINT16, TensorProto.INT16):
                    self.needs_opset.append((NARROW_OPSET, f"{who}: 16-bit codes"))
                return t
        raise UnsupportedLayerError(f"layer {who}: activation range [{q.qmin}, {q.qmax}] does not fit a 16-bit ONNX integer type")

    def qparams(self, q: ActQ, t: int) -> tuple[str, str]:
        key = (q.scale, q.zero_point, t)
        if key not in self.qparam_names:
            i = len(self.qparam_names)
            s = self.init(f"act{i}.scale", np.array(q.scale, dtype=np.float32))
            if t in (TensorProto.INT4, TensorProto.UINT4):
                z = self.init(f"act{i}.zero_point", dtype=t, vals=np.array(q.zero_point))
            else:
                z = self.init(f"act{i}.zero_point", np.array(q.zero_point, dtype=_NUMPY[t]))
            self.qparam_names[key] = (s, z)
        return self.qparam_names[key]

    def quantize(
        self,
        value: str,
        pre: str,
        q: ActQ,
        who: str,
        relu: bool = False,
        may_leave_range: bool = True,
        four_bit_ok: bool = True,
        bounds: tuple[int, int] | None = None,
    ) -> None:
        """``pre`` (float) -> Q -> [Clip] -> codes of ``value`` -> DQ -> float twin.

        ``relu``: clamp the codes at the zero point (the IntModel's fused ReLU).
        ``bounds``: the output clamp ``[lo, hi]`` (see :func:`out_bounds`); overrides ``relu``.
        ``may_leave_range``: False for data movement (max-pool, flatten, relu), whose
        codes are already inside [qmin, qmax].
        """
        self.check_q(q, who)
        lo, hi = bounds if bounds is not None else (q.zero_point if relu else q.qmin, q.qmax)
        t = self.container(q, who, four_bit_ok)
        tmin, tmax = _RANGES[t]
        s, z = self.qparams(q, t)
        if relu and lo == q.zero_point == tmin:
            # Q's saturation at the type minimum = z already is the ReLU; the float Relu
            # states it in the standard form (ONNX Runtime drops it when fusing).
            pre = self.node("Relu", [pre], self.fresh(f"{value}_relu"), name=f"{value}/Relu")
        clamp = may_leave_range and (lo, hi) != (tmin, tmax)
        int_clip = False
        if clamp and t in (TensorProto.INT4, TensorProto.UINT4) and (lo, hi) == (q.zero_point, tmax):
            # The 4-bit form only uses 4-bit types for exact 4-bit ranges, so a ReLU above a
            # nonzero z is a float Relu before Q (ORT has no 4-bit Clip).
            pre = self.node("Relu", [pre], self.fresh(f"{value}_relu"), name=f"{value}/Relu")
        elif clamp and t in (TensorProto.INT4, TensorProto.UINT4):
            # Any other clamp of 4-bit codes: float Max/Min at the bounds' real values (a Clip
            # before a 4-bit Q crashes ONNX Runtime 1.31's Clip/Q fusion).
            lo_f, hi_f = self.real_bounds(value, q, lo, hi)
            pre = self.node("Max", [pre, lo_f], self.fresh(f"{value}_max"), name=f"{value}/Max")
            pre = self.node("Min", [pre, hi_f], self.fresh(f"{value}_min"), name=f"{value}/Min")
            self.clips += 1
        elif clamp and t in (TensorProto.UINT16, TensorProto.INT16):
            # ONNX Runtime cannot Clip 16-bit integers; clamp the float at the real values of
            # lo and hi instead: rint(clip(x)/s) lands on lo or hi exactly.
            pre = self.float_clip(value, pre, q, lo, hi)
        elif clamp:
            int_clip = True
        codes, fvalue = self.names(value)
        qname = self.node("QuantizeLinear", [pre, s, z], self.fresh(codes) if int_clip else codes, name=f"{value}/Q")
        if int_clip:
            self.int_clip(value, qname, codes, t, lo, hi)
        self.node("DequantizeLinear", [codes, s, z], fvalue, name=f"{value}/DQ")
        self.codes_of[value], self.float_of[value], self.code_type[value], self.q_of[value] = codes, fvalue, t, q

    def check_q(self, q: ActQ, who: str) -> None:
        if not (np.isfinite(q.scale) and q.scale > 0 and np.float32(q.scale) > 0):
            raise UnsupportedLayerError(f"layer {who}: activation scale {q.scale!r} is not a positive float32")
        if not (q.qmin <= q.zero_point <= q.qmax):
            raise UnsupportedLayerError(f"layer {who}: zero point {q.zero_point} lies outside [{q.qmin}, {q.qmax}]")

    def names(self, value: str) -> tuple[str, str]:
        """(codes, float twin) tensor names of ``value``; the graph's outputs are named, not copied."""
        if value == self.m.output_name:
            return CODES_NAME, LOGITS_NAME
        return f"{value}_q", value

    def real_bounds(self, value: str, q: ActQ, lo: int, hi: int) -> tuple[str, str]:
        """float32 initializers at the real values of codes lo and hi (rint(v/s) + z lands on them)."""
        bounds = [np.float32((lo - q.zero_point) * np.float32(q.scale)), np.float32((hi - q.zero_point) * np.float32(q.scale))]
        lo_n = self.init(f"{value}.clip_min", np.array(bounds[0], dtype=np.float32))
        hi_n = self.init(f"{value}.clip_max", np.array(bounds[1], dtype=np.float32))
        return lo_n, hi_n

    def float_clip(self, value: str, pre: str, q: ActQ, lo: int, hi: int) -> str:
        lo_n, hi_n = self.real_bounds(value, q, lo, hi)
        self.clips += 1
        return self.node("Clip", [pre, lo_n, hi_n], self.fresh(f"{value}_clip"), name=f"{value}/Clip")

    def int_clip(self, value: str, src: str, codes: str, t: int, lo: int, hi: int) -> None:
        np_t = _NUMPY[t]
        lo_n = self.init(f"{value}.clip_min", np.array(lo, dtype=np_t))
        hi_n = self.init(f"{value}.clip_max", np.array(hi, dtype=np_t))
        self.node("Clip", [src, lo_n, hi_n], codes, name=f"{value}/Clip")
        self.clips += 1

    def integer_value(self, value: str, q: ActQ, t: int, make: "Callable[[str], None]") -> None:
        """A value whose codes an integer node computes directly (``make(codes_name)``),
        then its DQ float twin: exact data movement and table lookups."""
        self.check_q(q, value)
        s, z = self.qparams(q, t)
        codes, fvalue = self.names(value)
        make(codes)
        self.node("DequantizeLinear", [codes, s, z], fvalue, name=f"{value}/DQ")
        self.codes_of[value], self.float_of[value], self.code_type[value], self.q_of[value] = codes, fvalue, t, q

    def weight(self, op: IntOp) -> tuple[str, str]:
        """(float weight, float bias) DQ outputs: int weights per channel, int32 bias on s_x·s_w."""
        w = op.tensors["weight"].cpu()
        wq_min, wq_max = (
            int(op.attrs.get("w_qmin", int(w.min()) if w.numel() else 0)),
            int(op.attrs.get("w_qmax", int(w.max()) if w.numel() else 0)),
        )
        out_ch = w.shape[0]
        if self.low_bit == "int4" and wq_min >= -8 and wq_max <= 7:
            wt = TensorProto.INT4
            self.needs_opset.append((NARROW_OPSET, f"{op.name}: 4-bit weights"))
        elif wq_min >= -128 and wq_max <= 127:
            wt = TensorProto.INT8
        elif wq_min >= -32768 and wq_max <= 32767:
            wt = TensorProto.INT16
            self.needs_opset.append((NARROW_OPSET, f"{op.name}: 16-bit weights"))
        else:
            raise UnsupportedLayerError(f"layer {op.name} ({op.kind}): weight range [{wq_min}, {wq_max}] does not fit int16")
        codes = w.to(torch.int64).numpy()
        if wt in (TensorProto.INT4, TensorProto.INT8):
            if codes.size and (codes.min() < _RANGES[wt][0] or codes.max() > _RANGES[wt][1]):
                raise ExportError(f"layer {op.name} ({op.kind}): weight codes leave their recorded range")
        if wt == TensorProto.INT4:
            wq = self.init(f"{op.name}.weight_q", dtype=wt, vals=codes)
            wz = self.init(f"{op.name}.weight_zero_point", dtype=wt, vals=np.zeros(out_ch, dtype=np.int32))
        elif wt == TensorProto.INT8 and self.code_type.get(op.inputs[0]) == TensorProto.UINT8:
            # Under uint8 activations, int8 weights make ONNX Runtime pick its U8S8 kernels,
            # which on x86 CPUs without VNNI sum pairs of u8·s8 products in saturating int16
            # (vpmaddubsw): whole layers come out wrong. The same codes as uint8 with zero
            # point 128 select the U8U8 kernels, which are exact everywhere.
            wq = self.init(f"{op.name}.weight_q", (codes + 128).astype(np.uint8))
            wz = self.init(f"{op.name}.weight_zero_point", np.full(out_ch, 128, dtype=np.uint8))
        else:
            wq = self.init(f"{op.name}.weight_q", codes.astype(_NUMPY[wt]))
            wz = self.init(f"{op.name}.weight_zero_point", np.zeros(out_ch, dtype=_NUMPY[wt]))
        s_w = op.tensors["w_scale"].double().cpu().numpy()
        ws = self.init(f"{op.name}.weight_scale", s_w.astype(np.float32))
        wf = self.node("DequantizeLinear", [wq, ws, wz], f"{op.name}.weight", name=f"{op.name}/weight/DQ", axis=0)
        s_x = self.q_of[op.inputs[0]].scale
        bq = self.init(f"{op.name}.bias_q", op.tensors["bias"].cpu().numpy().astype(np.int32))
        # The bias scale is the accumulator's, s_x·s_w: the int32 bias is used as is by
        # the fused integer kernels; the float path dequantizes it with this scale.
        bs = self.init(f"{op.name}.bias_scale", (s_x * s_w).astype(np.float32))
        bz = self.init(f"{op.name}.bias_zero_point", np.zeros(out_ch, dtype=np.int32))
        bf = self.node("DequantizeLinear", [bq, bs, bz], f"{op.name}.bias", name=f"{op.name}/bias/DQ", axis=0)
        return wf, bf

    # ---- ops ---------------------------------------------------------------------
    def emit(self, op: IntOp) -> None:
        if op.kind not in _SUPPORTED_KINDS:
            raise UnsupportedLayerError(f"layer {op.name}: op kind {op.kind!r} has no ONNX QDQ form")
        for i in op.inputs:
            if i not in self.float_of and not (op.kind == "quantize" and i == self.m.input_name):
                raise ExportError(f"layer {op.name} ({op.kind}): reads {i!r} before it is written")
        out_shape = tuple(op.attrs.get("out_shape") or ())
        a = op.attrs
        src = [self.float_of.get(i, i) for i in op.inputs]
        if op.kind == "quantize":
            self.quantize(op.output, INPUT_NAME, op.out_q, op.name)
        elif op.kind == "conv":
            if len(a.get("kernel", (0, 0))) != 2:
                raise UnsupportedLayerError(f"layer {op.name} (conv): only 2-D convolutions are supported")
            wf, bf = self.weight(op)
            ph, pw = a["padding"]
            y = self.node(
                "Conv",
                [src[0], wf, bf],
                self.fresh(f"{op.output}_conv"),
                name=f"{op.name}/Conv",
                kernel_shape=list(a["kernel"]),
                strides=list(a["stride"]),
                pads=[ph, pw, ph, pw],
                dilations=list(a["dilation"]),
                group=int(a["groups"]),
            )
            self.quantize(op.output, y, op.out_q, op.name, relu=bool(a.get("relu")), bounds=out_bounds(op))
        elif op.kind == "linear":
            x = src[0]
            in_shape = tuple(a.get("in_shape") or self.shape_of.get(op.inputs[0], ()))
            if len(in_shape) != 1:  # the reference flattens whatever it is given
                x = self.node("Flatten", [x], self.fresh(f"{op.output}_flat"), axis=1)
            wf, bf = self.weight(op)
            y = self.node("Gemm", [x, wf, bf], self.fresh(f"{op.output}_gemm"), name=f"{op.name}/Gemm", transB=1)
            self.quantize(op.output, y, op.out_q, op.name, relu=bool(a.get("relu")), bounds=out_bounds(op))
        elif op.kind == "add":
            y = self.node("Add", [src[0], src[1]], self.fresh(f"{op.output}_add"), name=f"{op.name}/Add")
            self.quantize(op.output, y, op.out_q, op.name, relu=bool(a.get("relu")), bounds=out_bounds(op))
        elif op.kind == "avgpool" and a.get("adaptive"):
            in_shape = self.shape_of[op.inputs[0]]
            if len(in_shape) != 3:
                raise UnsupportedLayerError(f"layer {op.name} (avgpool): needs a [C, H, W] input, got {in_shape}")
            oh, ow = (int(v) for v in a["output_size"])
            if (oh, ow) == (1, 1):
                y = self.node("GlobalAveragePool", [src[0]], self.fresh(f"{op.output}_gap"), name=f"{op.name}/GlobalAveragePool")
                self.quantize(op.output, y, op.out_q, op.name)
            else:
                self.adaptive_pool(op, in_shape, (oh, ow))
        elif op.kind == "avgpool":
            in_shape = self.shape_of[op.inputs[0]]
            k, st, pd = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])
            if len(in_shape) != 3:
                raise UnsupportedLayerError(f"layer {op.name} (avgpool): needs a [C, H, W] input, got {in_shape}")
            if k == tuple(in_shape[1:]) and pd == (0, 0):
                y = self.node("GlobalAveragePool", [src[0]], self.fresh(f"{op.output}_gap"), name=f"{op.name}/GlobalAveragePool")
            else:
                # count_include_pad: the reference sums padding as real zeros, divides by k·k.
                y = self.node(
                    "AveragePool",
                    [src[0]],
                    self.fresh(f"{op.output}_ap"),
                    name=f"{op.name}/AveragePool",
                    kernel_shape=list(k),
                    strides=list(st),
                    pads=[pd[0], pd[1], pd[0], pd[1]],
                    count_include_pad=1,
                )
            self.quantize(op.output, y, op.out_q, op.name)
        elif op.kind == "maxpool":
            pd = tuple(a["padding"])  # both pad with -inf: the reference in code space, ONNX in float
            y = self.node(
                "MaxPool",
                [src[0]],
                self.fresh(f"{op.output}_mp"),
                name=f"{op.name}/MaxPool",
                kernel_shape=list(a["kernel"]),
                strides=list(a["stride"]),
                pads=[pd[0], pd[1], pd[0], pd[1]],
                dilations=list(a["dilation"]),
                ceil_mode=int(bool(a["ceil_mode"])),
            )
            # 4-bit form: max-pool outputs stay 8-bit. ORT 1.32 folds DQ(uint4)→MaxPool→Q(uint4)
            # into a MaxPool on uint4, which it then rejects; a type change blocks that fold.
            self.quantize(op.output, y, op.out_q, op.name, may_leave_range=False, four_bit_ok=False)
        elif op.kind == "relu":
            # A standalone ReLU keeps its input's qparams: Relu in float, then the same Q.
            y = self.node("Relu", [src[0]], self.fresh(f"{op.output}_relu"), name=f"{op.name}/Relu")
            self.quantize(op.output, y, op.out_q, op.name, may_leave_range=False)
        elif op.kind == "flatten":
            if len(out_shape) != 1:
                raise UnsupportedLayerError(f"layer {op.name} (flatten): only [batch, features] outputs are supported, got {out_shape}")
            y = self.node("Flatten", [src[0]], self.fresh(f"{op.output}_flat"), name=f"{op.name}/Flatten", axis=1)
            self.quantize(op.output, y, op.out_q, op.name, may_leave_range=False)
        elif op.kind == "mul":
            # DQ→Mul→Q: ONNX Runtime fuses it into QLinearMul (broadcasting included).
            y = self.node("Mul", [src[0], src[1]], self.fresh(f"{op.output}_mul"), name=f"{op.name}/Mul")
            self.quantize(op.output, y, op.out_q, op.name, relu=bool(a.get("relu")), bounds=out_bounds(op))
        elif op.kind == "cat":
            # DQ→Concat→Q: QLinearConcat, which requantizes each input by a 256-entry table.
            ndim = len(self.shape_of[op.inputs[0]]) + 1
            axis = int(a["axis"])
            if not (-ndim < axis < ndim) or axis % ndim == 0:
                raise UnsupportedLayerError(f"layer {op.name} (cat): axis {axis} must be a non-batch axis of a {ndim}-D value")
            y = self.node("Concat", src, self.fresh(f"{op.output}_cat"), name=f"{op.name}/Concat", axis=axis)
            self.quantize(op.output, y, op.out_q, op.name)
        elif op.kind == "clamp":
            self.clamp(op)
        elif op.kind == "lut":
            self.lut(op)
        elif op.kind == "mean":
            self.mean(op)
        elif op.kind in ("reshape", "permute", "slice"):
            self.move(op, out_shape)
        self.shape_of[op.output] = out_shape

    # ---- the new kinds' forms -------------------------------------------------------
    def same_q(self, op: IntOp) -> ActQ:
        xq = self.q_of[op.inputs[0]]
        if op.out_q != xq:
            raise UnsupportedLayerError(f"layer {op.name} ({op.kind}): output qparams {op.out_q} differ from its input's {xq}")
        return xq

    def move(self, op: IntOp, out_shape: tuple[int, ...]) -> None:
        """reshape / permute / slice: the integer op on the codes themselves (exact).

        ONNX Runtime cannot Reshape or Slice 4-bit codes, so in the int4 form those move
        the DQ'd floats and quantize again, into 8 bits (a type change also keeps ORT
        from folding the DQ/Q pair back into a 4-bit op): the same codes.
        """
        xq = self.same_q(op)
        a = op.attrs
        ndim = len(self.shape_of[op.inputs[0]]) + 1
        if op.kind == "reshape":
            # 0 copies the batch dimension (also an empty batch, where -1 would be ambiguous).
            shape = self.init(f"{op.name}.shape", np.array([0, *out_shape], dtype=np.int64))
            op_type, extra, attrs = "Reshape", [shape], {}
        elif op.kind == "permute":
            perm = [int(d) for d in a["dims"]]
            if sorted(perm) != list(range(ndim)) or perm[0] != 0:
                raise UnsupportedLayerError(f"layer {op.name} (permute): dims {perm} must permute 0..{ndim - 1} keeping the batch first")
            op_type, extra, attrs = "Transpose", [], {"perm": perm}
        else:
            axis = int(a["axis"])
            if not (-ndim < axis < ndim) or axis % ndim == 0:
                raise UnsupportedLayerError(f"layer {op.name} (slice): axis {axis} must be a non-batch axis of a {ndim}-D value")
            st = self.init(f"{op.name}.starts", np.array([int(a["start"])], dtype=np.int64))
            en = self.init(f"{op.name}.ends", np.array([int(a["end"])], dtype=np.int64))
            ax = self.init(f"{op.name}.axes", np.array([axis % ndim], dtype=np.int64))
            op_type, extra, attrs = "Slice", [st, en, ax], {}
        x, t = self.codes_of[op.inputs[0]], self.code_type[op.inputs[0]]
        if t in (TensorProto.INT4, TensorProto.UINT4):
            y = self.node(
                op_type,
                [self.float_of[op.inputs[0]], *extra],
                self.fresh(f"{op.output}_{op_type.lower()}"),
                name=f"{op.name}/{op_type}",
                **attrs,
            )
            self.quantize(op.output, y, xq, op.name, may_leave_range=False, four_bit_ok=False)
        else:
            self.integer_value(op.output, xq, t, lambda c: self.node(op_type, [x, *extra], c, name=f"{op.name}/{op_type}", **attrs))

    def clamp(self, op: IntOp) -> None:
        """A standalone clamp of codes: an integer Clip on them (8-bit containers), else a
        float Clip at the bounds' real values between DQ and Q (same codes)."""
        xq = self.same_q(op)
        lo, hi = int(op.attrs["lo"]), int(op.attrs["hi"])
        # min(max(q, lo), hi) on codes inside [qmin, qmax] is one clamp to [lo', hi']:
        lo_e, hi_e = min(max(xq.qmin, lo), hi), min(max(xq.qmax, lo), hi)
        lo_e, hi_e = min(lo_e, hi_e), hi_e
        if not (xq.qmin <= lo_e <= hi_e <= xq.qmax):
            raise UnsupportedLayerError(f"layer {op.name} (clamp): bounds [{lo}, {hi}] put codes outside [{xq.qmin}, {xq.qmax}]")
        x, t = self.codes_of[op.inputs[0]], self.code_type[op.inputs[0]]
        if t in (TensorProto.UINT8, TensorProto.INT8):
            self.integer_value(op.output, xq, t, lambda c: self.int_clip(op.output, x, c, t, lo_e, hi_e))
        else:
            y = self.float_clip(op.output, self.float_of[op.inputs[0]], xq, lo_e, hi_e)
            self.quantize(op.output, y, xq, op.name, may_leave_range=False, four_bit_ok=False)

    def lut(self, op: IntOp) -> None:
        """``table[q − qmin]`` as a Gather of an integer table indexed by the codes.

        The table spans the whole container (256 or 16 entries) so the codes index it
        directly: unsigned codes as 0..n−1, signed codes as −n/2..n/2−1, which Gather
        reads from the back (its negative indices). Entries outside [qmin, qmax] repeat
        the nearest real entry; no code reaches them.
        """
        xq, yq = self.q_of[op.inputs[0]], op.out_q
        x, t_in = self.codes_of[op.inputs[0]], self.code_type[op.inputs[0]]
        if t_in not in (TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT4, TensorProto.INT4):
            raise UnsupportedLayerError(
                f"layer {op.name} (lut): a lookup table needs 8-bit input codes, got {_type_name(t_in)} for [{xq.qmin}, {xq.qmax}]"
            )
        table = op.tensors["table"].to(torch.int64).cpu().numpy().ravel()
        if table.size != xq.qmax - xq.qmin + 1:
            raise ExportError(
                f"layer {op.name} (lut): table has {table.size} entries, the input range [{xq.qmin}, {xq.qmax}] needs {xq.qmax - xq.qmin + 1}"
            )
        if table.size and (table.min() < yq.qmin or table.max() > yq.qmax):
            raise ExportError(f"layer {op.name} (lut): table values leave the output range [{yq.qmin}, {yq.qmax}]")
        t_out = self.container(yq, op.name, four_bit_ok=False)
        tmin, tmax = _RANGES[t_in]
        n = tmax - tmin + 1
        codes = np.arange(tmin, tmax + 1)
        full = table[np.clip(codes, xq.qmin, xq.qmax) - xq.qmin]
        order = np.argsort(codes % n)  # position p holds code c with c ≡ p (mod n)
        tab = self.init(f"{op.name}.table", full[order].astype(_NUMPY[t_out]))
        idx = self.node("Cast", [x], self.fresh(f"{op.output}_idx"), name=f"{op.name}/Cast", to=TensorProto.INT32)
        self.integer_value(op.output, yq, t_out, lambda c: self.node("Gather", [tab, idx], c, name=f"{op.name}/Gather", axis=0))

    def mean(self, op: IntOp) -> None:
        """Mean over ``dims``: GlobalAveragePool (QLinearGlobalAveragePool) for the
        spatial dims of a 4-D value, else the exact sum-and-requantize form."""
        a = op.attrs
        in_shape = self.shape_of[op.inputs[0]]
        ndim = len(in_shape) + 1
        dims = sorted({int(d) % ndim for d in a["dims"]})
        if any(not (-ndim <= int(d) < ndim) for d in a["dims"]) or not dims or 0 in dims:
            raise UnsupportedLayerError(f"layer {op.name} (mean): dims {list(a['dims'])} must be non-batch axes of a {ndim}-D value")
        keep = bool(a.get("keepdim"))
        if ndim == 4 and dims == [2, 3]:
            pooled = op.output if keep else f"{op.output}_pooled"
            y = self.node(
                "GlobalAveragePool", [self.float_of[op.inputs[0]]], self.fresh(f"{op.output}_gap"), name=f"{op.name}/GlobalAveragePool"
            )
            if not keep and self.low_bit == "int4":
                # ONNX Runtime cannot Reshape 4-bit codes: drop the axes before Q (no fusion
                # to lose: the int4 form runs its pools in float).
                shape = self.init(f"{op.name}.shape", np.array([0, in_shape[0]], dtype=np.int64))
                y = self.node("Reshape", [y, shape], self.fresh(f"{op.output}_flat"), name=f"{op.name}/Reshape")
                pooled = op.output
            self.quantize(pooled, y, op.out_q, op.name)
            self.shape_of[pooled] = (in_shape[0], 1, 1) if pooled != op.output else tuple(op.attrs["out_shape"])
            if pooled != op.output:
                codes, t = self.codes_of[pooled], self.code_type[pooled]
                shape = self.init(f"{op.name}.shape", np.array([0, in_shape[0]], dtype=np.int64))
                self.integer_value(op.output, op.out_q, t, lambda c: self.node("Reshape", [codes, shape], c, name=f"{op.name}/Reshape"))
            return
        mult = self.multiplier(op, (1,)).reshape(())
        d = self.centered(op)
        axes = self.init(f"{op.name}.axes", np.array(dims, dtype=np.int64))
        acc = self.node("ReduceSum", [d, axes], self.fresh(f"{op.output}_sum"), name=f"{op.name}/ReduceSum", keepdims=int(keep))
        self.requantize_exact(op, acc, mult)

    def multiplier(self, op: IntOp, shape: tuple[int, ...]) -> np.ndarray:
        """The op's float64 requantization multipliers (the IntModel's own values, so the
        float64 form below reproduces its float rounding bit for bit)."""
        m = op.tensors["multiplier"].to(torch.float64).cpu().numpy()
        if m.size != int(np.prod(shape)):
            raise ExportError(f"layer {op.name} ({op.kind}): multiplier has shape {list(m.shape)}, expected {list(shape)}")
        return m.reshape(shape)

    def adaptive_pool(self, op: IntOp, in_shape: tuple[int, ...], out: tuple[int, int]) -> None:
        """Adaptive average pooling with PyTorch's (possibly uneven, overlapping) bins.

        ONNX has no such pool: the bin sums are two MatMuls with 0/1 matrices on the
        centred codes in float64 (integer sums, exact), then the exact requantization
        with each bin's own multiplier s_x/(count·s_y).
        """
        _, h, w = in_shape
        rows, cols = adaptive_bins(h, out[0]), adaptive_bins(w, out[1])
        ph = np.zeros((out[0], h))
        for i, (s0, e0) in enumerate(rows):
            ph[i, s0:e0] = 1.0
        pw = np.zeros((w, out[1]))
        for j, (s0, e0) in enumerate(cols):
            pw[s0:e0, j] = 1.0
        mult = self.multiplier(op, out)
        d = self.centered(op)
        pw_n = self.init(f"{op.name}.bins_w", pw)
        ph_n = self.init(f"{op.name}.bins_h", ph)
        sw = self.node("MatMul", [d, pw_n], self.fresh(f"{op.output}_sumw"), name=f"{op.name}/MatMulW")
        acc = self.node("MatMul", [ph_n, sw], self.fresh(f"{op.output}_sum"), name=f"{op.name}/MatMulH")
        self.requantize_exact(op, acc, mult)

    def centered(self, op: IntOp) -> str:
        """float64 ``q − z`` of the op's input codes (exact)."""
        xq = self.q_of[op.inputs[0]]
        x = self.codes_of[op.inputs[0]]
        xd = self.node("Cast", [x], self.fresh(f"{op.output}_f64"), name=f"{op.name}/Cast", to=TensorProto.DOUBLE)
        z = self.init(f"{op.name}.input_zero_point", np.array(float(xq.zero_point), dtype=np.float64))
        return self.node("Sub", [xd, z], self.fresh(f"{op.output}_centered"), name=f"{op.name}/Sub")

    def requantize_exact(self, op: IntOp, acc: str, mult: np.ndarray) -> None:
        """``clamp(round_half_even(acc · M) + z)`` in float64: the IntModel's float requantization."""
        yq = op.out_q
        t = self.container(yq, op.name, four_bit_ok=False)
        m = self.init(f"{op.name}.multiplier", mult.astype(np.float64))
        zo = self.init(f"{op.name}.output_zero_point", np.array(float(yq.zero_point), dtype=np.float64))
        lo = self.init(f"{op.name}.output_min", np.array(float(yq.qmin), dtype=np.float64))
        hi = self.init(f"{op.name}.output_max", np.array(float(yq.qmax), dtype=np.float64))
        p = self.node("Mul", [acc, m], self.fresh(f"{op.output}_scaled"), name=f"{op.name}/Mul")
        r = self.node("Round", [p], self.fresh(f"{op.output}_round"), name=f"{op.name}/Round")  # half to even
        y = self.node("Add", [r, zo], self.fresh(f"{op.output}_shift"), name=f"{op.name}/Add")
        c = self.node("Clip", [y, lo, hi], self.fresh(f"{op.output}_clip"), name=f"{op.name}/Clip")
        self.integer_value(op.output, yq, t, lambda codes: self.node("Cast", [c], codes, name=f"{op.name}/CastOut", to=t))

    def build(self) -> tuple[onnx.ModelProto, int]:
        m = self.m
        for op in m.ops:
            try:
                self.emit(op)
            except (KeyError, TypeError, ValueError) as e:
                if isinstance(e, ExportError):
                    raise
                raise ExportError(f"layer {op.name} ({op.kind}): malformed IntModel op: {type(e).__name__}: {e}") from e
        need, why = max(self.needs_opset)
        opset = self.requested_opset if self.requested_opset is not None else need
        latest = onnx.defs.onnx_opset_version()
        if not (MIN_OPSET <= opset <= latest):
            raise ExportError(f"opset {opset} is out of range: this exporter writes opsets {MIN_OPSET}..{latest} (onnx {onnx.__version__})")
        if opset < need:
            raise ExportError(f"opset {opset} is too old for this model: {why} needs opset {need}")
        out = m.output_name
        if out not in self.codes_of:
            raise ExportError(f"the IntModel's output {out!r} is never written")
        # The logits are the DQ of the last codes; the codes themselves are an output too,
        # so callers compare integers with the reference, not floats.
        out_dims = [BATCH_DIM, *self.shape_of[out]]
        outputs = [
            helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, out_dims),
            helper.make_tensor_value_info(CODES_NAME, self.code_type[out], out_dims),
        ]
        if self.expose_codes:
            for v, c in self.codes_of.items():
                if v != out:
                    outputs.append(helper.make_tensor_value_info(c, self.code_type[v], [BATCH_DIM, *self.shape_of[v]]))
        graph = helper.make_graph(
            self.nodes,
            "qatlab_intmodel",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, *m.input_shape])],
            outputs,
            initializer=self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qatlab", producer_version=qatlab.__version__
        )
        # The oldest IR that carries this opset (and 4-bit types, which need IR 10):
        # newer IRs would shut out older runtimes for nothing.
        ir = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
        if any(t in (TensorProto.INT4, TensorProto.UINT4) for t in self.code_type.values()) or any(
            i.data_type in (TensorProto.INT4, TensorProto.UINT4) for i in self.inits
        ):
            ir = max(ir, 10)
        model.ir_version = ir
        model.doc_string = (
            f"qatlab IntModel as QDQ (low_bit={self.low_bit}); output '{CODES_NAME}' holds the integer codes, "
            f"'{LOGITS_NAME}' their dequantized values"
        )
        meta = {
            "qatlab.rounding": m.rounding,
            "qatlab.low_bit": self.low_bit,
            "qatlab.output_scale": repr(m.output_q.scale),
            "qatlab.output_zero_point": str(m.output_q.zero_point),
        }
        if "config" in m.meta:
            meta["qatlab.config"] = json.dumps(m.meta["config"], sort_keys=True, default=str)
        helper.set_model_props(model, meta)
        return model, opset


def _as_int_model(model: IntModel | torch.nn.Module, input_shape: tuple[int, ...] | None, rounding: str) -> IntModel:
    if isinstance(model, IntModel):
        return model
    if isinstance(model, torch.fx.GraphModule):
        if input_shape is None:
            raise ExportError("exporting a QAT model needs its input_shape (C, H, W) without the batch")
        from qatlab.nn import UnsupportedLayerError as NnUnsupported

        try:
            return convert(model, tuple(input_shape), rounding)
        except UnsupportedLayerError:
            raise
        except NnUnsupported as e:  # convert names the layer and its type
            raise UnsupportedLayerError(f"cannot export: {e}") from e
    if isinstance(model, torch.nn.Module):
        raise ExportError(
            f"cannot export a plain {type(model).__name__}: QDQ export needs a quantized model "
            "(an IntModel, or the QAT model from prepare_qat / a ptq or qat checkpoint)"
        )
    raise ExportError(f"cannot export an object of type {type(model).__name__}; expected an IntModel or a QAT model")


def build_onnx(
    model: IntModel | torch.nn.Module,
    *,
    input_shape: tuple[int, ...] | None = None,
    rounding: str = "float",
    opset: int | None = None,
    low_bit: str = "clip",
    expose_codes: bool = False,
    check: bool = True,
) -> onnx.ModelProto:
    """The QDQ ``onnx.ModelProto`` of ``model`` (an IntModel, or a QAT fx model + ``input_shape``).

    ``opset`` None picks the oldest that holds the model (13; 21 for 4- or 16-bit
    types). ``expose_codes`` adds every intermediate value's codes as a graph output
    (for layer-by-layer comparison). ``check`` runs ``onnx.checker`` (full check).
    """
    im = _as_int_model(model, input_shape, rounding)
    proto, _ = _Builder(im, opset, low_bit, expose_codes).build()
    if check:
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"onnx.checker rejects the exported graph: {str(e).splitlines()[0]}") from e
    return proto


def export_onnx(
    model: IntModel | torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, ...] | None = None,
    rounding: str = "float",
    opset: int | None = None,
    low_bit: str = "clip",
    expose_codes: bool = False,
    verify: bool = True,
) -> ExportInfo:
    """Write ``model`` as a QDQ ONNX file at ``path``, atomically.

    The graph passes ``onnx.checker`` (full check); with ``verify`` ONNX Runtime must
    also load it and run one batch before it replaces ``path``. On any error nothing
    is left at ``path`` (an existing file there is untouched) and no temp file stays.
    """
    p = Path(path)
    if p.is_dir():
        raise ExportError(f"{p}: is a folder; give the .onnx file to write")
    if not p.parent.is_dir():
        raise ExportError(f"{p}: folder {p.parent} does not exist")
    im = _as_int_model(model, input_shape, rounding)
    builder = _Builder(im, opset, low_bit, expose_codes)
    proto, used_opset = builder.build()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejects the exported graph: {str(e).splitlines()[0]}") from e
    data = proto.SerializeToString()
    if verify:
        _verify(data, im)
    try:
        write_bytes(p, data, mkdir=False)
    except OSError as e:
        raise ExportError(f"{p}: cannot write: {e}") from e
    return ExportInfo(
        path=str(p),
        opset=used_opset,
        low_bit=low_bit,
        rounding=im.rounding,
        nodes=dict(Counter(n.op_type for n in proto.graph.node)),
        code_types=dict(Counter(_type_name(t) for t in builder.code_type.values())),
        clips=builder.clips,
        size_bytes=len(data),
    )


def _verify(data: bytes, im: IntModel) -> None:
    """ONNX Runtime loads the bytes and runs two inputs; its failures become ExportErrors."""
    try:
        run_onnx(data, np.zeros((2, *im.input_shape), dtype=np.float32))
    except Exception as e:  # onnxruntime raises its own exception types (Fail, NotImplemented, …)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX Runtime cannot run the exported graph: {msg}") from e
