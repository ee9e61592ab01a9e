"""ONNX Runtime's arithmetic for the IntModel's newer op kinds, replayed on codes.

``emulate_ort`` (in :mod:`.runtime`) calls :func:`emulate_op` for these kinds. Each
rule is what the exported form (:mod:`.qdq`) makes ONNX Runtime (CPU, default graph
optimizations, x86-64) compute:

* ``mul`` (DQ→Mul→Q, fused into QLinearMul; MLAS qlmul.cpp, SSE2 path): the int16
  product ``(a − z_a)·(b − z_b)`` exact in int32, then
  ``rint(fp32(fp32(fp32(ab) · R) + fp32(z_y)))`` with ``R = fp32(fp32(s_a·s_b) / s_y)``:
  the zero point is added in float32 before the rounding, where the IntModel adds it
  after. Saturation to the type, then the graph's Clip to the IntModel's bounds.
* ``cat`` (DQ→Concat→Q, fused into QLinearConcat): an input whose float32 scale and
  zero point equal the output's is copied; the others go through a 256-entry table
  built as ``rint(fp32(fp32((q − z_i)·s_i) / s_y)) + z_y`` (dequantize, then
  QuantizeLinear's division), saturated.
* ``mean`` over the two spatial axes and the adaptive pool to 1×1
  (GlobalAveragePool → QLinearGlobalAveragePool): ``rint(fp32(Σ(q − z)) · S) + z_y``
  with ``S = fp32(s_x / fp32(s_y · count))``.
* other ``mean``s and adaptive pools: the exported graph sums and requantizes in
  float64 (``round_half_even(Σ(q − z) · M) + z_y`` with the op's own float64
  ``multiplier`` M = s_x/(count·s_y)): the IntModel's float requantization, and
  its fixed one but for ties (the fixed path widens the sums by ``2^pre_shift``
  first, so it rounds once). The replay needs no ``rounding``: ORT's arithmetic is
  the same for both.
* ``clamp``, ``lut``, ``reshape``, ``permute``, ``slice``: integer ops on the codes,
  exact.
"""

from __future__ import annotations

import torch

from qatlab.intmodel import ActQ, IntOp

from .errors import ExportError
from .qdq import adaptive_bins, out_bounds

KINDS = ("mul", "cat", "mean", "clamp", "lut", "reshape", "permute", "slice")

# The integer types that hold 8-bit codes, as the exporter picks them (uint8 first).
_TYPE_RANGES = ((0, 255), (-128, 127))


def _f32(v: float | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float32)


def _rint(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t).to(torch.int64)  # half to even, as cvtps2dq / nearbyintf


def type_range(q: ActQ) -> tuple[int, int]:
    """The 8-bit container of codes in [qmin, qmax] (the exporter's choice)."""
    for lo, hi in _TYPE_RANGES:
        if lo <= q.qmin and q.qmax <= hi:
            return lo, hi
    return q.qmin, q.qmax  # wider codes: the graph's float clamp is the range itself


def _bounded(y: torch.Tensor, op: IntOp) -> torch.Tensor:
    # Q (or the integer kernel) saturates to its type, the graph's Clip narrows to the
    # IntModel's bounds, which lie inside the type: together one clamp.
    lo, hi = out_bounds(op)
    return y.clamp(lo, hi).to(torch.int32)


def emulate_mul(op: IntOp, qa: torch.Tensor, qb: torch.Tensor, xa: ActQ, xb: ActQ) -> torch.Tensor:
    yq = op.out_q
    ab = (qa.to(torch.int64) - xa.zero_point) * (qb.to(torch.int64) - xb.zero_point)
    ratio = (_f32(xa.scale) * _f32(xb.scale)) / _f32(yq.scale)
    v = (ab.to(torch.float32) * ratio) + _f32(float(yq.zero_point))
    return _bounded(_rint(v), op)


def emulate_requant_table(q: torch.Tensor, xq: ActQ, yq: ActQ) -> torch.Tensor:
    """QLinearConcat's per-input requantization (its lookup table, applied elementwise)."""
    if float(_f32(xq.scale)) == float(_f32(yq.scale)) and xq.zero_point == yq.zero_point:
        return q.to(torch.int64)
    tmin, tmax = type_range(yq)
    f = (q.to(torch.int64) - xq.zero_point).to(torch.float32) * _f32(xq.scale)
    return (_rint(f / _f32(yq.scale)) + yq.zero_point).clamp(tmin, tmax)


def emulate_cat(op: IntOp, xs: list[torch.Tensor], qs: list[ActQ]) -> torch.Tensor:
    parts = [emulate_requant_table(x, q, op.out_q) for x, q in zip(xs, qs)]
    return _bounded(torch.cat(parts, dim=int(op.attrs["axis"])), op)


def emulate_global_pool(op: IntOp, q: torch.Tensor, xq: ActQ, keepdim: bool) -> torch.Tensor:
    count = q.shape[2] * q.shape[3]
    acc = (q.to(torch.int64) - xq.zero_point).sum(dim=(2, 3), keepdim=keepdim)
    scale = _f32(xq.scale) / (_f32(op.out_q.scale) * _f32(float(count)))
    return _bounded(_rint(acc.to(torch.float32) * scale) + op.out_q.zero_point, op)


def emulate_exact_requant(op: IntOp, acc: torch.Tensor, mult: torch.Tensor) -> torch.Tensor:
    """The exported float64 form: round half even of acc·M, + z, clamp."""
    y = torch.round(acc.to(torch.float64) * mult.to(torch.float64)).to(torch.int64)
    return (y + op.out_q.zero_point).clamp(op.out_q.qmin, op.out_q.qmax).to(torch.int32)


def emulate_mean(op: IntOp, q: torch.Tensor, xq: ActQ) -> torch.Tensor:
    ndim = q.dim()
    dims = sorted({int(d) % ndim for d in op.attrs["dims"]})
    keep = bool(op.attrs.get("keepdim"))
    if ndim == 4 and dims == [2, 3]:
        return emulate_global_pool(op, q, xq, keep)
    acc = (q.to(torch.int64) - xq.zero_point).sum(dim=dims, keepdim=keep)
    return emulate_exact_requant(op, acc, op.tensors["multiplier"].reshape(()).to(acc.device))


def emulate_adaptive_pool(op: IntOp, q: torch.Tensor, xq: ActQ) -> torch.Tensor:
    oh, ow = (int(v) for v in op.attrs["output_size"])
    if (oh, ow) == (1, 1):
        return emulate_global_pool(op, q, xq, True)
    d = q.to(torch.int64) - xq.zero_point
    rows, cols = adaptive_bins(q.shape[2], oh), adaptive_bins(q.shape[3], ow)
    acc = torch.stack([torch.stack([d[:, :, r0:r1, c0:c1].sum(dim=(2, 3)) for c0, c1 in cols], -1) for r0, r1 in rows], -2)
    return emulate_exact_requant(op, acc, op.tensors["multiplier"].reshape(oh, ow).to(acc.device))


def emulate_op(op: IntOp, vals: dict[str, torch.Tensor], qs: dict[str, ActQ]) -> torch.Tensor | None:
    """Codes ONNX Runtime computes for ``op`` (a kind of :data:`KINDS`, or an adaptive
    average pool); None for ops this module does not cover."""
    ins = [vals[i] for i in op.inputs]
    iq = [qs[i] for i in op.inputs]
    k, a = op.kind, op.attrs
    if k == "avgpool":
        return emulate_adaptive_pool(op, ins[0], iq[0]) if a.get("adaptive") else None
    if k == "mul":
        return emulate_mul(op, ins[0], ins[1], iq[0], iq[1])
    if k == "cat":
        return emulate_cat(op, ins, iq)
    if k == "mean":
        return emulate_mean(op, ins[0], iq[0])
    if k == "clamp":
        return torch.minimum(torch.maximum(ins[0], torch.tensor(int(a["lo"]))), torch.tensor(int(a["hi"]))).to(torch.int32)
    if k == "lut":
        table = op.tensors["table"].to(torch.int32).to(ins[0].device)
        return table[(ins[0].to(torch.int64) - iq[0].qmin)]
    if k == "reshape":
        return ins[0].reshape(ins[0].shape[0], *a["out_shape"])
    if k == "permute":
        return ins[0].permute(*[int(d) for d in a["dims"]])
    if k == "slice":
        axis = int(a["axis"])
        return ins[0].narrow(axis, *_slice_span(ins[0].shape[axis], int(a["start"]), int(a["end"])))
    if k in KINDS:
        raise ExportError(f"internal: no ONNX Runtime rule for op kind {k!r}")
    return None


def _slice_span(n: int, start: int, end: int) -> tuple[int, int]:
    # Python/ONNX Slice semantics: negative ends count from the back, both clamp to [0, n].
    s = min(max(start + n if start < 0 else start, 0), n)
    e = min(max(end + n if end < 0 else end, 0), n)
    return s, max(e - s, 0)
