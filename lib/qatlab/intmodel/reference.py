"""The CPU reference executor: integer arithmetic only, the input quantized once.

Convolutions and matmuls accumulate in int32 through ``torch._int_mm`` (int8 x int8
-> int32) where both operands fit int8, else in int64 (checked back into int32).
Requantization is ``qatlab.quant.requantize`` in the model's rounding mode.
Im2col moves codes through float32, which holds every integer below 2^24 exactly.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from qatlab.quant import requantize
from qatlab.quant.requant import multiply_by_quantized_multiplier

from .model import ActQ, IntModel, IntOp

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class AccumulatorOverflowError(ArithmeticError):
    """An accumulator left int32: the integer model would wrap on real hardware."""


def _dense(t: torch.Tensor) -> torch.Tensor:
    """A row-major copy unless the strides already are the canonical (cols, 1).

    torch 2.13's CPU ``_int_mm`` trusts the strides even on size-1 dims, where
    ``is_contiguous()`` says True for odd strides (a transposed [N, 1] weight), and
    then reads the wrong memory.
    """
    if t.stride() == (t.shape[1], 1):
        return t
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


def int_matmul(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a [M, K] @ w[N, K]^T`` exactly, as int32. ``a`` and ``w`` hold integer values."""
    if a.dtype == torch.int8 and w.dtype == torch.int8 and a.device.type == "cpu":
        return torch._int_mm(_dense(a), _dense(w.t()))
    acc = a.to(torch.int64) @ w.to(torch.int64).t()
    if acc.numel() and (int(acc.min()) < INT32_MIN or int(acc.max()) > INT32_MAX):
        raise AccumulatorOverflowError("int32 accumulator overflow")
    return acc.to(torch.int32)


def _shifted(q: torch.Tensor, xq: ActQ) -> tuple[torch.Tensor, int]:
    """Codes offset so they fit int8 where possible: returns (q − o, o)."""
    o = 128 if (xq.qmin >= 0 and xq.qmax <= 255) else 0
    return q - o, o


def _to_int8_if_fits(t: torch.Tensor) -> torch.Tensor:
    if t.numel() and int(t.min()) >= -128 and int(t.max()) <= 127:
        return t.to(torch.int8)
    return t.to(torch.int64)


def _saturate(y: torch.Tensor, op: IntOp) -> torch.Tensor:
    """Codes ``y`` (zero point added) through the op's fused clamp, then its ReLU and
    output range, in that order."""
    yq = op.out_q
    c = op.attrs.get("clamp")
    if c is not None:
        y = y.clamp(int(c[0]), int(c[1]))
    lo = yq.zero_point if op.attrs.get("relu") else yq.qmin
    return y.clamp(lo, yq.qmax).to(torch.int32)


def _rescale(acc: torch.Tensor, op: IntOp, rounding: str, suffix: str = "") -> torch.Tensor:
    """``round(acc · M) + z_out`` (int64, unsaturated) with the op's multiplier
    ``multiplier{suffix}`` or ``fixed_multiplier{suffix}``/``shift{suffix}``.

    Fixed rounding with a ``pre_shift{suffix}`` tensor (mul, cat, mean, adaptive
    pools) widens ``acc`` by ``2^pre_shift`` first, as TFLite widens an add's inputs:
    the stored shift already includes ``−pre_shift``. The converter picks the widening
    so that no code in range can leave int32 (``pre_shift_multiplier``); codes out
    of range would, and raise here rather than saturate."""
    t, z = op.tensors, op.out_q.zero_point
    wide = 2**62  # the saturation happens in _saturate, after any clamp
    if rounding == "float":
        return requantize(acc, t[f"multiplier{suffix}"], z, -wide, wide, "float")
    pre = t.get(f"pre_shift{suffix}")
    if pre is not None:
        acc = _widen(acc.to(torch.int64), int(pre.reshape(-1)[0]), op)
    return requantize(acc, t[f"fixed_multiplier{suffix}"], z, -wide, wide, "fixed", t[f"shift{suffix}"])


def _widen(acc: torch.Tensor, pre_shift: int, op: IntOp) -> torch.Tensor:
    if pre_shift == 0:
        return acc
    limit = 1 << (31 - pre_shift)  # |acc| < limit  <=>  acc · 2^pre_shift is an int32
    if acc.numel() and (int(acc.min()) <= -limit or int(acc.max()) >= limit):
        raise AccumulatorOverflowError(
            f"op {op.name}: a value outside ±{limit - 1} leaves int32 when widened by 2^{pre_shift} for fixed-point requantization"
        )
    return acc << pre_shift


def _requant(acc: torch.Tensor, op: IntOp, rounding: str) -> torch.Tensor:
    return _saturate(_rescale(acc, op, rounding), op)


def _matmul_layer(a_codes: torch.Tensor, xq: ActQ, w: torch.Tensor) -> torch.Tensor:
    """Σ w·(q − z) for rows of codes ``a_codes`` [M, K], via the int8 offset trick:
    Σ w·(q − z) = Σ w·(q − o) + (o − z)·Σ w."""
    a, o = _shifted(a_codes, xq)
    a = _to_int8_if_fits(a)
    w8 = w if w.dtype == torch.int8 else w.to(torch.int64)
    acc = int_matmul(a, w8)
    corr = (o - xq.zero_point) * w.to(torch.int64).sum(dim=1)
    total = acc.to(torch.int64) + corr
    return total


def conv_rows(q: torch.Tensor, op: IntOp, xq: ActQ) -> list[torch.Tensor]:
    """Im2col of a conv's input codes ``q`` [B, C, H, W]: one int32 row matrix
    [B·L, C/groups·kh·kw] of codes per group (L = output pixels)."""
    kh, kw = op.tensors["weight"].shape[2:]
    groups = op.attrs["groups"]
    cin_g = q.shape[1] // groups
    ph, pw = op.attrs["padding"]
    # Real zero padding is the code z: pad in code space with z, not 0.
    x = F.pad(q.float(), (pw, pw, ph, ph), value=float(xq.zero_point))
    cols = F.unfold(x, (kh, kw), dilation=op.attrs["dilation"], stride=op.attrs["stride"])  # [B, C*kh*kw, L]
    k = cin_g * kh * kw
    return [cols[:, g * k : (g + 1) * k].transpose(1, 2).reshape(-1, k).to(torch.int32) for g in range(groups)]


def conv_output(y: torch.Tensor, op: IntOp, batch: int) -> torch.Tensor:
    """Rows [B·L, out_ch] (the GEMM's layout) -> NCHW [B, out_ch, oh, ow]."""
    out_ch, oh, ow = y.shape[1], *op.attrs["out_shape"][1:]
    return y.reshape(batch, oh * ow, out_ch).transpose(1, 2).reshape(batch, out_ch, oh, ow)


def run_conv(q: torch.Tensor, op: IntOp, xq: ActQ, rounding: str) -> torch.Tensor:
    w = op.tensors["weight"]
    out_ch = w.shape[0]
    rows = conv_rows(q, op, xq)
    per_out = out_ch // len(rows)
    accs = [_matmul_layer(r, xq, w[g * per_out : (g + 1) * per_out].reshape(per_out, -1)) for g, r in enumerate(rows)]
    acc = torch.cat(accs, dim=1) + op.tensors["bias"].to(torch.int64)
    _check_int32(acc, op)
    return conv_output(_requant(acc, op, rounding), op, q.shape[0])


def run_linear(q: torch.Tensor, op: IntOp, xq: ActQ, rounding: str) -> torch.Tensor:
    acc = _matmul_layer(q.reshape(q.shape[0], -1), xq, op.tensors["weight"]) + op.tensors["bias"].to(torch.int64)
    _check_int32(acc, op)
    return _requant(acc, op, rounding)


def _check_int32(acc: torch.Tensor, op: IntOp) -> None:
    if acc.numel() and (int(acc.min()) < INT32_MIN or int(acc.max()) > INT32_MAX):
        raise AccumulatorOverflowError(f"layer {op.name}: int32 accumulator overflow (with bias)")


def run_add(qa: torch.Tensor, qb: torch.Tensor, op: IntOp, xa: ActQ, xb: ActQ, rounding: str) -> torch.Tensor:
    yq = op.out_q
    da, db = (qa - xa.zero_point).to(torch.int64), (qb - xb.zero_point).to(torch.int64)
    if rounding == "float":
        y = torch.round(da.double() * op.tensors["real_a"] + db.double() * op.tensors["real_b"]).to(torch.int64)
    else:
        # TFLite-style: inputs widened by 2^16, rescaled in fixed point, summed, narrowed.
        t = op.tensors
        sa = multiply_by_quantized_multiplier(da << 16, t["fixed_multiplier_a"], t["shift_a"])
        sb = multiply_by_quantized_multiplier(db << 16, t["fixed_multiplier_b"], t["shift_b"])
        s = sa + sb
        y = (s + (1 << 15) - (s < 0).to(torch.int64)) >> 16  # round half away from zero
    return _saturate(y + yq.zero_point, op)


def run_mul(qa: torch.Tensor, qb: torch.Tensor, op: IntOp, xa: ActQ, xb: ActQ, rounding: str) -> torch.Tensor:
    prod = (qa.to(torch.int64) - xa.zero_point) * (qb.to(torch.int64) - xb.zero_point)
    return _saturate(_rescale(prod, op, rounding), op)


def run_cat(qs: list[torch.Tensor], op: IntOp, xqs: list[ActQ], rounding: str) -> torch.Tensor:
    parts = []
    for i, (q, xq) in enumerate(zip(qs, xqs)):
        if xq == op.out_q:
            parts.append(q.to(torch.int32))
        else:
            parts.append(_saturate(_rescale(q.to(torch.int64) - xq.zero_point, op, rounding, f"_{i}"), op))
    return torch.cat(parts, int(op.attrs["axis"]))


def run_mean(q: torch.Tensor, op: IntOp, xq: ActQ, rounding: str) -> torch.Tensor:
    acc = (q.to(torch.int64) - xq.zero_point).sum(dim=tuple(op.attrs["dims"]), keepdim=bool(op.attrs["keepdim"]))
    return _saturate(_rescale(acc, op, rounding), op)


def run_lut(q: torch.Tensor, op: IntOp, xq: ActQ) -> torch.Tensor:
    table = op.tensors["table"].to(q.device)
    if table.numel() != xq.qmax - xq.qmin + 1:
        raise ValueError(f"op {op.name}: table has {table.numel()} entries for {xq.qmax - xq.qmin + 1} input codes")
    return table[(q.to(torch.int64) - xq.qmin)]


def adaptive_bin_sums(d: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
    """Σ over PyTorch's adaptive bins of int64 ``d`` [N, C, H, W], via an integral image:
    each bin is four lookups, whatever its size."""
    n, c, h, w = d.shape
    ii = torch.zeros((n, c, h + 1, w + 1), dtype=torch.int64, device=d.device)
    ii[:, :, 1:, 1:] = d.cumsum(2).cumsum(3)
    r0, r1 = _bin_edges(h, out[0], d.device)
    c0, c1 = _bin_edges(w, out[1], d.device)
    return ii[:, :, r1][:, :, :, c1] - ii[:, :, r0][:, :, :, c1] - ii[:, :, r1][:, :, :, c0] + ii[:, :, r0][:, :, :, c0]


def _bin_edges(n: int, out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(out, device=device)
    return (i * n) // out, -((-(i + 1) * n) // out)


def run_avgpool(q: torch.Tensor, op: IntOp, xq: ActQ, rounding: str) -> torch.Tensor:
    a = op.attrs
    if a.get("adaptive"):
        acc = adaptive_bin_sums(q.to(torch.int64) - xq.zero_point, tuple(a["output_size"]))  # type: ignore[arg-type]
        return _saturate(_rescale(acc, op, rounding), op)
    d = q.float() - xq.zero_point
    # Sum of codes (exact in float32 below 2^24), padding contributes real zeros.
    s = F.avg_pool2d(d, a["kernel"], a["stride"], a["padding"], count_include_pad=True, divisor_override=1)
    acc = torch.round(s).to(torch.int64)
    yq = op.out_q
    if rounding == "float":
        y = requantize(acc, torch.tensor(a["multiplier"], dtype=torch.float64), yq.zero_point, yq.qmin, yq.qmax, "float")
    else:
        acc = _widen(acc, int(a.get("pre_shift", 0)), op)  # version-1 files: no widening
        y = requantize(acc, torch.tensor(a["fixed_multiplier"]), yq.zero_point, yq.qmin, yq.qmax, "fixed", torch.tensor(a["shift"]))
    return y.to(torch.int32)


def run_maxpool(q: torch.Tensor, op: IntOp, xq: ActQ) -> torch.Tensor:
    a = op.attrs
    return F.max_pool2d(q.float(), a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]).to(torch.int32)


def quantize_input(x: torch.Tensor, q: ActQ) -> torch.Tensor:
    """The one float step: ``clamp(round(x · (1/s)) + z)``, as qatlab.quant does."""
    inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(q.scale, dtype=torch.float32)
    return (torch.round(x.float() * inv) + q.zero_point).clamp(q.qmin, q.qmax).to(torch.int32)


def run_op(op: IntOp, vals: dict[str, torch.Tensor], qs: dict[str, ActQ], rounding: str) -> torch.Tensor:
    ins = [vals[i] for i in op.inputs]
    iq = [qs.get(i) for i in op.inputs]
    k = op.kind
    if k == "quantize":
        return quantize_input(ins[0], op.out_q)
    if k == "conv":
        return run_conv(ins[0], op, iq[0], rounding)  # type: ignore[arg-type]
    if k == "linear":
        return run_linear(ins[0], op, iq[0], rounding)  # type: ignore[arg-type]
    if k == "add":
        return run_add(ins[0], ins[1], op, iq[0], iq[1], rounding)  # type: ignore[arg-type]
    if k == "avgpool":
        return run_avgpool(ins[0], op, iq[0], rounding)  # type: ignore[arg-type]
    if k == "maxpool":
        return run_maxpool(ins[0], op, iq[0])  # type: ignore[arg-type]
    if k == "relu":
        return ins[0].clamp(min=op.out_q.zero_point)
    if k in ("flatten", "reshape"):
        return ins[0].reshape(ins[0].shape[0], *op.attrs["out_shape"])
    if k == "clamp":
        return ins[0].clamp(int(op.attrs["lo"]), int(op.attrs["hi"]))
    if k == "lut":
        return run_lut(ins[0], op, iq[0])  # type: ignore[arg-type]
    if k == "mul":
        return run_mul(ins[0], ins[1], op, iq[0], iq[1], rounding)  # type: ignore[arg-type]
    if k == "cat":
        return run_cat(ins, op, iq, rounding)  # type: ignore[arg-type]
    if k == "mean":
        return run_mean(ins[0], op, iq[0], rounding)  # type: ignore[arg-type]
    if k == "permute":
        return ins[0].permute(*op.attrs["dims"]).contiguous()
    if k == "slice":
        a = op.attrs
        return ins[0].narrow(int(a["axis"]), int(a["start"]), int(a["end"]) - int(a["start"])).contiguous()
    raise ValueError(f"op {op.name}: unknown kind {k!r}")


OpRunner = Callable[[IntOp, "dict[str, torch.Tensor]", "dict[str, ActQ]", str], torch.Tensor]


def run(model: IntModel, x: torch.Tensor, batch_size: int = 1000, runner: OpRunner = run_op) -> torch.Tensor:
    """Output codes (int32) of ``model`` on float inputs ``x`` [B, *input_shape]."""
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise ValueError(f"x: expected inputs of shape [B, {', '.join(map(str, model.input_shape))}], got {list(x.shape)}")
    outs = []
    for start in range(0, x.shape[0], batch_size):
        vals: dict[str, torch.Tensor] = {model.input_name: x[start : start + batch_size]}
        qs: dict[str, ActQ] = {}
        for op in model.ops:
            vals[op.output] = runner(op, vals, qs, model.rounding)
            qs[op.output] = op.out_q
        outs.append(vals[model.output_name])
    return torch.cat(outs) if outs else torch.empty(0, dtype=torch.int32)


def dequantize_output(model: IntModel, codes: torch.Tensor) -> torch.Tensor:
    q = model.output_q
    return (codes.float() - q.zero_point) * q.scale


def predict(model: IntModel, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Class predictions: argmax of the output codes (monotonic in the logits)."""
    return run(model, x, batch_size).argmax(dim=1)
