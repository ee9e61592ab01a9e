"""IntModels written op by op, for tests that must not wait on convert().

:class:`NetBuilder` appends IntOps following the IntModel contract (model.py) and
calibrates as it goes: each op's output qparams come from the real values its
float counterpart takes on a calibration batch, so the codes spread over the range
(saturating everything would test nothing). The codes of each value are the CPU
reference's (``reference.run_op``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qatlab.intmodel import IntModel, reference
from qatlab.intmodel.model import ActQ, IntOp, rescale_bounds
from qatlab.quant import quantize_multiplier
from qatlab.quant.requant import pre_shift_multiplier

LUT_FNS = {
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,
}


def act_q(lo: float, hi: float, bits: int = 8, signed: bool = False) -> ActQ:
    """Asymmetric qparams covering [min(lo, 0), max(hi, 0)]: codes [0, 2^b − 1], or
    [−2^(b−1), 2^(b−1) − 1] when ``signed``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmax = 2**bits - 1
    s = max(hi - lo, 1e-6) / qmax
    z = int(min(max(round(-lo / s), 0), qmax))
    off = 2 ** (bits - 1) if signed else 0
    return ActQ(s, z - off, -off, qmax - off)


def requant_tensors(real: torch.Tensor, suffix: str = "") -> dict[str, torch.Tensor]:
    m, s = quantize_multiplier(real)
    return {
        f"multiplier{suffix}": real.double(),
        f"fixed_multiplier{suffix}": torch.from_numpy(m).reshape(real.shape),
        f"shift{suffix}": torch.from_numpy(s).reshape(real.shape),
    }


def widened_requant_tensors(real: torch.Tensor, bound: int, suffix: str = "") -> dict[str, torch.Tensor]:
    """As the converter stores a mul's, cat input's, mean's or adaptive pool's
    requantization: values ``|v| ≤ bound`` widened by ``2^pre_shift`` in fixed point."""
    m, s, pre = pre_shift_multiplier(real, bound)
    return {
        f"multiplier{suffix}": real.double(),
        f"fixed_multiplier{suffix}": torch.from_numpy(m).reshape(real.shape),
        f"shift{suffix}": torch.from_numpy(s).reshape(real.shape),
        f"pre_shift{suffix}": torch.tensor([pre], dtype=torch.int32),
    }


def adaptive_bins(n: int, out: int) -> list[tuple[int, int]]:
    return [((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]


class NetBuilder:
    """Appends ops to an IntModel under construction (see the module doc)."""

    def __init__(self, calib: torch.Tensor, bits: int = 8, rounding: str = "float", seed: int = 0, signed: bool = False) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.bits, self.rounding, self.signed = bits, rounding, signed
        self.input_shape = tuple(calib.shape[1:])
        self.ops: list[IntOp] = []
        self.codes: dict[str, torch.Tensor] = {"x": calib}
        self.q: dict[str, ActQ] = {}
        self._n = 0
        q = act_q(float(calib.min()), float(calib.max()), bits, signed)
        self._add(IntOp("quantize", "x_q", ["x"], "x_q", q, {"in_shape": self.input_shape}))

    # ---- plumbing -----------------------------------------------------------------
    def name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._n}"

    def real(self, v: str) -> torch.Tensor:
        q = self.q[v]
        return (self.codes[v].double() - q.zero_point) * q.scale

    def shape(self, v: str) -> tuple[int, ...]:
        return tuple(self.codes[v].shape[1:])

    def _add(self, op: IntOp) -> str:
        out = reference.run_op(op, self.codes, self.q, self.rounding)
        op.attrs["out_shape"] = tuple(out.shape[1:])
        self.codes[op.output], self.q[op.output] = out, op.out_q
        self.ops.append(op)
        return op.output

    def _out_q(self, y: torch.Tensor, relu: bool = False) -> ActQ:
        # A random widening, as observers rarely see the exact extremes: without it the
        # scales of a product or sum are small-integer ratios of the inputs' and exact
        # half-way ties would be everywhere (a real model has few).
        widen = 1.0 + 0.1 * float(torch.rand((), generator=self.g))
        return act_q(0.0 if relu else float(y.min()) * widen, float(y.max()) * widen, self.bits, self.signed)

    def _clamp_codes(self, q: ActQ, clamp: tuple[float | None, float | None] | None) -> list[int] | None:
        # As the converter turns ReLU6 / Hardtanh(a, b) into code bounds.
        if clamp is None:
            return None
        a, b = clamp
        lo = q.qmin if a is None else q.zero_point + round(a / q.scale)
        hi = q.qmax if b is None else q.zero_point + round(b / q.scale)
        return [lo, hi]

    def build(self, output: str | None = None) -> IntModel:
        return IntModel(list(self.ops), "x", output or self.ops[-1].output, self.input_shape, self.rounding)

    # ---- compute ops ----------------------------------------------------------------
    def _weights(self, out_ch: int, fan_in: int, shape: tuple[int, ...], xq: ActQ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Symmetric narrow-range weights of the activations' width (W4A4, W8A8, ...).
        wmax = 2 ** (min(self.bits, 8) - 1) - 1
        w = torch.randint(-wmax, wmax + 1, (out_ch, *shape), generator=self.g, dtype=torch.int8)
        s_w = (torch.rand(out_ch, generator=self.g) + 0.5) / (wmax * math.sqrt(fan_in))
        b = torch.randn(out_ch, generator=self.g) * 0.2
        bias = torch.round(b.double() / (xq.scale * s_w.double())).to(torch.int32)
        return w, s_w.float(), bias

    def conv(
        self,
        src: str,
        out_ch: int,
        k: int = 3,
        stride: int = 1,
        padding: int = 1,
        groups: int = 1,
        dilation: int = 1,
        relu: bool = False,
        clamp: tuple[float | None, float | None] | None = None,
    ) -> str:
        xq, cin = self.q[src], self.shape(src)[0]
        wmax = 2 ** (min(self.bits, 8) - 1) - 1
        w, s_w, bias = self._weights(out_ch, cin // groups * k * k, (cin // groups, k, k), xq)
        real_w = w.double() * s_w.double().view(-1, 1, 1, 1)
        y = F.conv2d(self.real(src), real_w, bias.double() * xq.scale * s_w.double(), stride, padding, dilation, groups)
        yq = self._out_q(y, relu or (clamp is not None and clamp[0] is not None and clamp[0] >= 0))
        attrs = {
            "stride": (stride, stride), "padding": (padding, padding), "dilation": (dilation, dilation), "groups": groups,
            "kernel": (k, k), "relu": relu, "in_shape": self.shape(src), "w_bits": min(self.bits, 8), "w_qmin": -wmax, "w_qmax": wmax, "a_bits": xq.bits,
            "out_shape": tuple(y.shape[1:]),
        }  # fmt: skip
        c = self._clamp_codes(yq, clamp)
        if c is not None:
            attrs["clamp"] = c
        tensors = {"weight": w, "bias": bias, "w_scale": s_w, **requant_tensors(s_w.double() * xq.scale / yq.scale)}
        name = self.name("conv")
        return self._add(IntOp("conv", name, [src], name, yq, attrs, tensors))

    def linear(self, src: str, out_f: int, relu: bool = False, clamp: tuple[float | None, float | None] | None = None) -> str:
        xq = self.q[src]
        fan_in = math.prod(self.shape(src))
        wmax = 2 ** (min(self.bits, 8) - 1) - 1
        w, s_w, bias = self._weights(out_f, fan_in, (fan_in,), xq)
        y = self.real(src).reshape(len(self.codes[src]), -1) @ (w.double() * s_w.double().view(-1, 1)).t()
        y = y + bias.double() * xq.scale * s_w.double()
        yq = self._out_q(y, relu)
        attrs = {"relu": relu, "in_shape": self.shape(src), "w_bits": min(self.bits, 8), "w_qmin": -wmax, "w_qmax": wmax, "a_bits": xq.bits}
        c = self._clamp_codes(yq, clamp)
        if c is not None:
            attrs["clamp"] = c
        tensors = {"weight": w, "bias": bias, "w_scale": s_w, **requant_tensors(s_w.double() * xq.scale / yq.scale)}
        name = self.name("fc")
        return self._add(IntOp("linear", name, [src], name, yq, attrs, tensors))

    def add(self, a: str, b: str, relu: bool = False, clamp: tuple[float | None, float | None] | None = None) -> str:
        qa, qb = self.q[a], self.q[b]
        yq = self._out_q(self.real(a) + self.real(b), relu)
        tensors: dict[str, torch.Tensor] = {}
        for tag, q in (("a", qa), ("b", qb)):
            tensors.update(requant_tensors(torch.tensor([q.scale / yq.scale], dtype=torch.float64), f"_{tag}"))
            tensors[f"real_{tag}"] = torch.tensor([q.scale / yq.scale], dtype=torch.float64)
        attrs: dict[str, object] = {"relu": relu}
        c = self._clamp_codes(yq, clamp)
        if c is not None:
            attrs["clamp"] = c
        name = self.name("add")
        return self._add(IntOp("add", name, [a, b], name, yq, attrs, tensors))

    def mul(self, a: str, b: str, clamp: tuple[float | None, float | None] | None = None) -> str:
        qa, qb = self.q[a], self.q[b]
        yq = self._out_q(self.real(a) * self.real(b))
        attrs: dict[str, object] = {}
        c = self._clamp_codes(yq, clamp)
        if c is not None:
            attrs["clamp"] = c
        real = torch.tensor([qa.scale * qb.scale / yq.scale], dtype=torch.float64)
        tensors = widened_requant_tensors(real, rescale_bounds("mul", [qa, qb])[0])
        name = self.name("mul")
        return self._add(IntOp("mul", name, [a, b], name, yq, attrs, tensors))

    def cat(self, srcs: list[str], axis: int = 1, share_q_with: int | None = None) -> str:
        """``share_q_with``: give the output that input's qparams (its requantization is the identity)."""
        y = torch.cat([self.real(s) for s in srcs], axis)
        yq = self.q[srcs[share_q_with]] if share_q_with is not None else self._out_q(y)
        tensors: dict[str, torch.Tensor] = {}
        in_qs = [self.q[s] for s in srcs]
        for i, (q, bound) in enumerate(zip(in_qs, rescale_bounds("cat", in_qs))):
            tensors.update(widened_requant_tensors(torch.tensor([q.scale / yq.scale], dtype=torch.float64), bound, f"_{i}"))
        name = self.name("cat")
        return self._add(IntOp("cat", name, list(srcs), name, yq, {"axis": axis}, tensors))

    def lut(self, src: str, fn: str) -> str:
        xq = self.q[src]
        codes = torch.arange(xq.qmin, xq.qmax + 1)
        v = LUT_FNS[fn]((codes.float() - xq.zero_point) * torch.tensor(xq.scale, dtype=torch.float32))
        yq = self._out_q(v.double())
        inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(yq.scale, dtype=torch.float32)
        table = (torch.round(v * inv) + yq.zero_point).clamp(yq.qmin, yq.qmax).to(torch.int32)
        name = self.name("lut")
        return self._add(IntOp("lut", name, [src], name, yq, {"fn": fn}, {"table": table}))

    def clamp(self, src: str, lo: int, hi: int) -> str:
        name = self.name("clamp")
        return self._add(IntOp("clamp", name, [src], name, self.q[src], {"lo": lo, "hi": hi}))

    def mean(self, src: str, dims: list[int], keepdim: bool) -> str:
        xq = self.q[src]
        y = self.real(src).mean(dim=dims, keepdim=keepdim)
        yq = self._out_q(y)
        count = math.prod(self.codes[src].shape[d] for d in dims)
        real = torch.tensor([xq.scale / (count * yq.scale)], dtype=torch.float64)
        tensors = widened_requant_tensors(real, rescale_bounds("mean", [xq], count)[0])
        name = self.name("mean")
        return self._add(IntOp("mean", name, [src], name, yq, {"dims": list(dims), "keepdim": keepdim, "count": count}, tensors))

    def adaptive_avgpool(self, src: str, out: tuple[int, int]) -> str:
        xq = self.q[src]
        yq = self._out_q(F.adaptive_avg_pool2d(self.real(src), out))
        _, h, w = self.shape(src)
        rows, cols = adaptive_bins(h, out[0]), adaptive_bins(w, out[1])
        count = torch.tensor([[(r1 - r0) * (c1 - c0) for c0, c1 in cols] for r0, r1 in rows], dtype=torch.int32)
        bound = rescale_bounds("avgpool", [xq], int(count.max()))[0]
        tensors = {"count": count, **widened_requant_tensors(xq.scale / (count.double() * yq.scale), bound)}
        name = self.name("gap")
        return self._add(IntOp("avgpool", name, [src], name, yq, {"adaptive": True, "output_size": list(out)}, tensors))

    def move(self, kind: str, src: str, **attrs: object) -> str:
        """reshape (out_shape), permute (dims) or slice (axis, start, end)."""
        name = self.name(kind)
        return self._add(IntOp(kind, name, [src], name, self.q[src], dict(attrs)))


# ---- small blocks of the shapes the new kinds come from ---------------------------------


def images(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g) * 1.5 + 0.3


def inverted_residual(rounding: str = "float", seed: int = 0, bits: int = 8, signed: bool = False) -> IntModel:
    """MobileNetV2: 1×1 expand + Hardtanh(0, b), depthwise 3×3 + Hardtanh, 1×1 project, clamped add;
    then an adaptive pool with uneven bins, reshape and a classifier."""
    nb = NetBuilder(images(64, (4, 9, 11), seed), bits, rounding, seed, signed)
    x = nb.conv("x_q", 4, k=3, relu=True)
    e = nb.conv(x, 12, k=1, padding=0, clamp=(0.0, 1.0))
    d = nb.conv(e, 12, k=3, groups=12, clamp=(0.0, 0.8))
    p = nb.conv(d, 4, k=1, padding=0)
    r = nb.add(x, p, clamp=(-0.5, 2.0))
    pooled = nb.adaptive_avgpool(r, (4, 3))
    flat = nb.move("reshape", pooled, out_shape=(4 * 4 * 3,))
    nb.linear(flat, 10)
    return nb.build()


def squeeze_excite(rounding: str = "float", seed: int = 0, bits: int = 8, signed: bool = False) -> IntModel:
    """MobileNetV3: conv + hardswish, SE gate (mean, 1×1 convs, hardsigmoid, mul), a
    strided depthwise conv, global mean and a classifier."""
    nb = NetBuilder(images(64, (3, 8, 8), seed), bits, rounding, seed, signed)
    x = nb.lut(nb.conv("x_q", 8), "hardswish")
    s = nb.mean(x, [2, 3], keepdim=True)
    s = nb.conv(s, 4, k=1, padding=0, relu=True)
    s = nb.lut(nb.conv(s, 8, k=1, padding=0), "hardsigmoid")
    y = nb.mul(x, s)
    y = nb.conv(y, 8, k=3, stride=2, groups=8, clamp=(None, 0.3))
    g = nb.mean(y, [2, 3], keepdim=False)
    nb.linear(g, 10)
    return nb.build()


def shuffle_unit(rounding: str = "float", seed: int = 0, bits: int = 8, signed: bool = False) -> IntModel:
    """ShuffleNetV2: split (two slices), a depthwise branch, cat, channel shuffle
    (reshape, permute, reshape); a standalone clamp, a mean over channels, more luts."""
    nb = NetBuilder(images(64, (3, 6, 7), seed), bits, rounding, seed, signed)
    x = nb.conv("x_q", 8, relu=True)
    a = nb.move("slice", x, axis=1, start=0, end=4)
    b = nb.move("slice", x, axis=1, start=4, end=8)
    b = nb.conv(nb.conv(b, 4, k=3, groups=4), 4, k=1, padding=0, relu=True)
    y = nb.cat([a, b], axis=1)
    y = nb.move("reshape", y, out_shape=(2, 4, 6, 7))
    y = nb.move("permute", y, dims=(0, 2, 1, 3, 4))
    y = nb.move("reshape", y, out_shape=(8, 6, 7))
    q = nb.q[y]
    span = q.qmax - q.zero_point
    y = nb.clamp(y, q.zero_point + max(1, span // 16), q.qmax - max(1, span // 12))
    m = nb.mean(y, [1], keepdim=True)
    t = nb.lut(nb.conv(m, 4, k=3, padding=1), "tanh")
    u = nb.lut(nb.conv(y, 4, k=3, padding=1), "silu")
    v = nb.lut(nb.cat([t, u], axis=1, share_q_with=1), "gelu")
    v = nb.move("permute", v, dims=(0, 2, 3, 1))
    w = nb.lut(nb.move("slice", v, axis=3, start=1, end=7), "sigmoid")
    nb.linear(nb.move("reshape", w, out_shape=(6 * 7 * 6,)), 10)
    return nb.build()


BLOCKS = {"inverted_residual": inverted_residual, "squeeze_excite": squeeze_excite, "shuffle_unit": shuffle_unit}
