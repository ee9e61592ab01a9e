"""Comparing the exported graph, as ONNX Runtime runs it (:mod:`.session`), with the IntModel.

ONNX Runtime (CPU, default graph optimizations) fuses every DQ→op→Q group into an
integer kernel; see ``emulate_ort`` for the arithmetic those kernels use and why it
can differ from the CPU reference by one code.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from qatlab.intmodel import ActQ, IntModel, IntOp, run
from qatlab.intmodel.reference import run_conv, run_linear, run_op

from . import ort_arith
from .errors import ExportError
from .names import CODES_NAME
from .qdq import build_onnx, out_bounds
from .session import open_session, ort_session, run_onnx

# ---- ONNX Runtime's arithmetic, replayed on the IntModel -----------------------------
#
# With its default optimizations ONNX Runtime (CPU, x86-64) fuses the QDQ groups into
# MLAS integer kernels. Their int32 accumulators are exact, as the reference's are;
# what differs is the requantization (ORT sources: qlinearconv.cc, quant_gemm.cc,
# mlas/lib/quantize.cpp, qladd.cpp, qlgavgpool.cpp):
#
# * QuantizeLinear: ``rint(x / s) + z`` in float32: a division, where the reference
#   multiplies by a float32 ``1/s``; the two differ in the last bit now and then.
# * QLinearConv / QGemm: ``M = fp32(fp32(s_x·s_w) / s_y)`` (float32, two roundings),
#   then ``rint(fp32(acc) · M) + z``: one float32 product, where the reference
#   multiplies in float64 with M kept in float64.
# * QLinearAdd: ``rint(fp32(fp32((a − z_a)·s_a) + fp32((b − z_b)·s_b)) / s_y)``: float32
#   dequantize, add, quantize. The reference computes ``(a − z_a)·(s_a/s_y) + …`` in
#   float64. (Measured: this rule reproduces all 11.8 M add outputs of four
#   calibrated ResNet-8 exports on digits under ORT 1.32 on an AVX-512 CPU; the
#   fixed-point AVX2 kernel of some MLAS versions, 22-bit multipliers rounded half
#   away from zero, missed 16 of them.)
# * QLinearGlobalAveragePool: ``scale = fp32(s_x / fp32(s_y · count))``, then as conv.
# * mul, cat, mean, adaptive pools and the integer ops on codes: see ``ort_arith``.
#
# ``emulate_ort`` runs the IntModel with exactly these rules, so comparing ONNX Runtime
# with it tells whether every difference from the reference is explained by them.


def _f32(v: float | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float32)


def _ort_round(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t).to(torch.int64)  # rint: half to even, as cvtps2dq / lrintf


def _clamp_out(y: torch.Tensor, op: IntOp) -> torch.Tensor:
    # The graph's Q saturates to its type and the Clip (or Relu) narrows to the
    # IntModel's [lo, qmax]; for codes both are the one clamp below.
    lo, hi = out_bounds(op)
    return (y + op.out_q.zero_point).clamp(lo, hi).to(torch.int32)


def _accumulator(op: IntOp, x: torch.Tensor, xq: ActQ) -> torch.Tensor:
    """The exact int32 accumulator (with bias) of a conv/linear: the reference's own,
    read out by running the op with multiplier 1 and an unbounded output range."""
    wide = ActQ(1.0, 0, -(2**62), 2**62)
    tensors = dict(op.tensors)
    out_ch = tensors["weight"].shape[0]
    tensors["multiplier"] = torch.ones(out_ch, dtype=torch.float64)
    attrs = {k: v for k, v in op.attrs.items() if k != "clamp"}  # the output clamp is _clamp_out's
    raw = IntOp(op.kind, op.name, op.inputs, op.output, wide, {**attrs, "relu": False}, tensors)
    acc = run_conv(x, raw, xq, "float") if op.kind == "conv" else run_linear(x, raw, xq, "float")
    return acc.to(torch.int64)


def _emulate_matmul_layer(op: IntOp, x: torch.Tensor, xq: ActQ) -> torch.Tensor:
    acc = _accumulator(op, x, xq)
    m = (_f32(xq.scale) * op.tensors["w_scale"].float()) / _f32(op.out_q.scale)  # float32, left to right
    if op.kind == "conv":
        m = m.view(1, -1, 1, 1)
    y = _ort_round(acc.to(torch.float32) * m)
    return _clamp_out(y, op)


def _emulate_add(op: IntOp, qa: torch.Tensor, qb: torch.Tensor, xa: ActQ, xb: ActQ) -> torch.Tensor:
    # MLAS QLinearAdd: each input dequantized in float32, summed in float32, then
    # quantized as QuantizeLinear does (divide by s_y, rint).
    fa = (qa.to(torch.int64) - xa.zero_point).to(torch.float32) * _f32(xa.scale)
    fb = (qb.to(torch.int64) - xb.zero_point).to(torch.float32) * _f32(xb.scale)
    y = _ort_round((fa + fb) / _f32(op.out_q.scale))
    return _clamp_out(y, op)


def _emulate_avgpool(op: IntOp, q: torch.Tensor, xq: ActQ, in_shape: tuple[int, ...]) -> torch.Tensor | None:
    a = op.attrs
    if tuple(a["kernel"]) != tuple(in_shape[-2:]) or tuple(a["padding"]) != (0, 0):
        return None  # only the global pool (QLinearGlobalAveragePool) is replayed
    count = int(a["count"])
    acc = (q.to(torch.int64) - xq.zero_point).sum(dim=(2, 3), keepdim=True)
    scale = _f32(xq.scale) / (_f32(op.out_q.scale) * _f32(float(count)))
    y = _ort_round(acc.to(torch.float32) * scale)
    return _clamp_out(y, op)


def emulate_ort(
    model: IntModel, x: torch.Tensor, batch_size: int = 1000, capture: dict[str, list[torch.Tensor]] | None = None
) -> torch.Tensor:
    """Output codes of ``model`` computed with ONNX Runtime's CPU requantization rules.

    Ops ONNX Runtime computes exactly (max-pool, ReLU, flatten) and ops this replay
    does not cover (a padded/strided average pool) use the reference's arithmetic.
    ``capture``: filled with every value's codes, per batch.
    """

    def runner(op: IntOp, vals: dict[str, torch.Tensor], qs: dict[str, ActQ], rounding: str) -> torch.Tensor:
        out: torch.Tensor | None = None
        if op.kind == "quantize":
            q = op.out_q
            xf = vals[op.inputs[0]].float()
            out = (_ort_round(xf / _f32(q.scale)) + q.zero_point).clamp(q.qmin, q.qmax).to(torch.int32)
        elif op.kind in ("conv", "linear"):
            out = _emulate_matmul_layer(op, vals[op.inputs[0]], qs[op.inputs[0]])
        elif op.kind == "add":
            out = _emulate_add(op, vals[op.inputs[0]], vals[op.inputs[1]], qs[op.inputs[0]], qs[op.inputs[1]])
        elif op.kind in ort_arith.KINDS or (op.kind == "avgpool" and op.attrs.get("adaptive")):
            out = ort_arith.emulate_op(op, vals, qs)
        elif op.kind == "avgpool":
            out = _emulate_avgpool(op, vals[op.inputs[0]], qs[op.inputs[0]], tuple(vals[op.inputs[0]].shape))
        if out is None:
            out = run_op(op, vals, qs, rounding)
        if capture is not None:
            capture.setdefault(op.output, []).append(out)
        return out

    return run(model, x, batch_size, runner)


# ---- comparison ------------------------------------------------------------------------


@dataclass
class LayerDiff:
    """One value of the network: how often ONNX Runtime's codes differ from the reference's
    and from the replay of ORT's own rules (``emulate_ort``)."""

    name: str
    kind: str
    mismatch: float  # fraction of codes != reference
    max_diff: int
    emulated_mismatch: float  # fraction of codes != emulate_ort (0: fully explained)


@dataclass
class OnnxComparison:
    """ONNX Runtime beside the IntModel (and the fake-quant model) on one labelled set."""

    n: int
    optimization: str
    int_acc: float
    ort_acc: float
    fq_acc: float | None
    agreement: float  # fraction of images where ORT's prediction equals the IntModel's
    code_agreement: float  # fraction of output codes (all classes) that are equal
    max_code_diff: int
    emulated_agreement: float | None  # fraction of ORT's output codes equal to emulate_ort's
    emulated_pred_agreement: float | None
    disagreements: list[int] = field(default_factory=list)  # image indices (first 50)
    layers: list[LayerDiff] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        fq = f"{self.fq_acc:.4f}" if self.fq_acc is not None else "n/a"
        lines = [
            f"n={self.n} (ORT optimization={self.optimization})",
            f"accuracy: fake-quant {fq}  IntModel {self.int_acc:.4f}  ONNX Runtime {self.ort_acc:.4f}",
            f"ORT vs IntModel: predictions agree {self.agreement:.4%}, output codes equal {self.code_agreement:.4%}"
            f" (max |diff| {self.max_code_diff})",
        ]
        if self.emulated_agreement is not None:
            lines.append(
                f"ORT vs emulate_ort (ORT's float32 requantization replayed): codes equal "
                f"{self.emulated_agreement:.4%}, predictions {self.emulated_pred_agreement:.4%}"
            )
        for ld in self.layers or []:
            lines.append(
                f"  {ld.kind:8} {ld.name:24} codes != reference {ld.mismatch:8.4%} (max {ld.max_diff})  != emulation {ld.emulated_mismatch:8.4%}"
            )
        return "\n".join(lines)


def _fq_predictions(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            dev = next((p.device for p in model.parameters()), torch.device("cpu"))
            return torch.cat([model(x[i : i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)


def _acc(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if len(y) else float("nan")


def compare_onnx(
    int_model: IntModel,
    onnx_model: str | os.PathLike[str] | bytes | Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    fake_quant: torch.nn.Module | None = None,
    optimization: str = "all",
    batch_size: int = 1000,
    emulate: bool = True,
    per_layer: bool = False,
    threads: int | None = None,
    reference: torch.Tensor | None = None,
) -> OnnxComparison:
    """Accuracies of the fake-quant model (if given), the IntModel and ONNX Runtime on
    ``(x, y)``, and how far ORT's output codes agree with the IntModel's.

    ``emulate`` also replays ORT's requantization on the IntModel (``emulate_ort``):
    an ``emulated_agreement`` of 1.0 means every ORT/IntModel difference comes from
    the rounding rules listed there. ``per_layer`` re-exports the IntModel with every
    intermediate code tensor as an output and reports each value's mismatch (slower;
    an exposed output can block a fusion, so it describes a close relative of the graph).
    ``reference``: the IntModel's output codes on ``x`` if already computed (skips a run).
    """
    if len(x) != len(y):
        raise ExportError(f"x has {len(x)} images but y has {len(y)} labels")
    sess = open_session(onnx_model, optimization, threads)
    ort_out = run_onnx(sess, x, batch_size=batch_size)
    # One pass of each executor; with per_layer it keeps every value's codes.
    ref_vals: dict[str, list[torch.Tensor]] | None = {} if per_layer else None
    emu_vals: dict[str, list[torch.Tensor]] | None = {} if per_layer else None

    def capture(op: IntOp, vals: dict[str, torch.Tensor], qs: dict[str, ActQ], rounding: str) -> torch.Tensor:
        r = run_op(op, vals, qs, rounding)
        if ref_vals is not None:
            ref_vals.setdefault(op.output, []).append(r)
        return r

    if reference is not None and not per_layer:
        ref = reference
    else:
        ref = run(int_model, x, batch_size, capture)
    if ort_out.codes.shape != ref.shape:
        raise ExportError(
            f"ONNX output shape {tuple(ort_out.codes.shape)} differs from the IntModel's {tuple(ref.shape)}: not this model's export"
        )
    ort_pred, int_pred = ort_out.codes.argmax(1), ref.argmax(1)
    diff = (ort_out.codes.to(torch.int64) - ref.to(torch.int64)).abs()
    emu_codes = emu_pred = None
    if emulate or per_layer:
        emu = emulate_ort(int_model, x, batch_size, capture=emu_vals)
        emu_codes = float((emu == ort_out.codes).float().mean())
        emu_pred = float((emu.argmax(1) == ort_pred).float().mean())
    layers = None
    if ref_vals is not None and emu_vals is not None:
        low_bit = sess.get_modelmeta().custom_metadata_map.get("qatlab.low_bit", "clip")
        layers = _layer_diffs(int_model, x, optimization, batch_size, threads, low_bit, ref_vals, emu_vals)
    return OnnxComparison(
        n=len(y),
        optimization=optimization,
        int_acc=_acc(int_pred, y),
        ort_acc=_acc(ort_pred, y),
        fq_acc=_acc(_fq_predictions(fake_quant, x, batch_size), y) if fake_quant is not None else None,
        agreement=_acc(ort_pred, int_pred),
        code_agreement=float((diff == 0).float().mean()) if diff.numel() else float("nan"),
        max_code_diff=int(diff.max()) if diff.numel() else 0,
        emulated_agreement=emu_codes if emulate else None,
        emulated_pred_agreement=emu_pred if emulate else None,
        disagreements=torch.nonzero(ort_pred != int_pred).flatten()[:50].tolist(),
        layers=layers,
    )


def _layer_diffs(
    model: IntModel,
    x: torch.Tensor,
    optimization: str,
    batch_size: int,
    threads: int | None,
    low_bit: str,
    ref_vals: dict[str, list[torch.Tensor]],
    emu_vals: dict[str, list[torch.Tensor]],
) -> list[LayerDiff]:
    proto = build_onnx(model, expose_codes=True, check=False, low_bit=low_bit)
    sess = ort_session(proto.SerializeToString(), optimization=optimization, threads=threads)
    fetchable = {o.name for o in sess.get_outputs() if o.type in ("tensor(uint8)", "tensor(int8)", "tensor(uint16)", "tensor(int16)")}
    out = run_onnx(sess, x, batch_size=batch_size)
    diffs = []
    for op in model.ops:
        name = CODES_NAME if op.output == model.output_name else f"{op.output}_q"
        got = out.codes if name == CODES_NAME else out.extra.get(name)
        if got is None or (name != CODES_NAME and name not in fetchable):
            continue
        r = torch.cat(ref_vals[op.output]).to(torch.int64)
        e = torch.cat(emu_vals[op.output]).to(torch.int64)
        g = got.to(torch.int64).reshape(r.shape)
        d = (g - r).abs()
        diffs.append(
            LayerDiff(op.output, op.kind, float((d > 0).float().mean()), int(d.max()) if d.numel() else 0, float((g != e).float().mean()))
        )
    return diffs
