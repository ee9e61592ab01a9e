"""QAT modules: compute layers with weight and output quantizers, and the quantized glue ops.

Each compute module owns the quantizer of its *output*, so every value flowing
between modules is on an integer grid, and ``convert`` reads one module at a time.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qatlab.quant import QuantSpec

from .fake_quant import FakeQuant


class QuantAct(nn.Module):
    """Quantizes a value (the model input, or any tensor) with its own observer."""

    def __init__(self, spec: QuantSpec, ste: str = "clipped") -> None:
        super().__init__()
        self.act_fq = FakeQuant(spec, ste, "act")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fq(x)


def act_codes(fq: FakeQuant, x: torch.Tensor) -> torch.Tensor:
    """The codes ``fq`` gives the real values ``x``: ``clamp(round(x·(1/s)) + z)`` in
    float32, the fake quantizers' own arithmetic (every STE kind rounds this way), so
    a bound or a table computed here lands exactly where the fake-quant model does."""
    qp = fq.qparams()
    s = qp.scale.float().reshape(())
    z = float(qp.zero_point.reshape(()))
    t = torch.round(x.detach().float().cpu() * (torch.tensor(1.0, dtype=torch.float32) / s.cpu()))
    return (t + z).clamp(qp.qmin, qp.qmax).to(torch.int64)


def clamp_codes(fq: FakeQuant, bounds: tuple[float | None, float | None]) -> tuple[int, int]:
    """Integer bounds of a real clamp on the grid of ``fq``; an open end is the range end.

    Fake quantization is monotone non-decreasing, so ``fq(clamp(y, a, b))`` equals
    ``clamp(fq(y), fq(a), fq(b))`` code for code."""
    qp = fq.qparams()
    lo, hi = bounds
    clo = qp.qmin if lo is None else int(act_codes(fq, torch.tensor([lo]))[0])
    chi = qp.qmax if hi is None else int(act_codes(fq, torch.tensor([hi]))[0])
    return clo, chi


def _centred_codes(x: torch.Tensor, s: float) -> torch.Tensor:
    """A quantized value's codes minus the zero point, exactly: x holds k·s (float32)."""
    return torch.round(x.double() / s)


def _requantized_value(acc: torch.Tensor, multiplier: float | torch.Tensor, s_out: float) -> torch.Tensor:
    """The value of output code round(acc·M) (float64 round half to even, the integer
    model's ``float`` rounding), for the output quantizer to map back onto that code."""
    return (torch.round(acc * multiplier) * s_out).float()


# Averages and products: a minmax-observed output range sits at an average (or a
# product) of input codes, so the requantization multiplier is a ratio of small
# integers and exact ties are common; float32 arithmetic rounds them either way. In
# eval mode these modules therefore compute what the integer model computes, from
# the exact input codes, as the compute layers' bias sits on the accumulator grid.


def _with_relu(clamp: tuple[float | None, float | None] | None) -> tuple[float | None, float | None]:
    """``clamp`` after a ReLU: the lower end raised to 0."""
    lo, hi = clamp if clamp is not None else (None, None)
    return (0.0 if lo is None else max(0.0, lo), hi)


class _QuantCompute(nn.Module):
    relu: bool
    clamp: tuple[float | None, float | None] | None = None

    def set_input_quantizer(self, fq: FakeQuant) -> None:
        # A plain reference, not a submodule: the quantizer belongs to the upstream layer.
        object.__setattr__(self, "_input_fq", fq)
        object.__setattr__(self, "_input_fqs", [fq])

    def set_input_quantizers(self, fqs: list[FakeQuant]) -> None:
        object.__setattr__(self, "_input_fq", fqs[0])
        object.__setattr__(self, "_input_fqs", list(fqs))

    def _integer_scales(self, n_inputs: int) -> list[float] | None:
        """Eval mode, every quantizer known and per tensor: the input scales and the
        output scale (as float64 Python floats, as ``convert`` reads them); else None."""
        fqs = getattr(self, "_input_fqs", None)
        if self.training or fqs is None or len(fqs) != n_inputs or not self.act_fq.enabled or not all(f.enabled for f in fqs):
            return None
        if self.act_fq.observe:  # an observer must see the float values, not last batch's grid
            return None
        try:
            scales = [f.qparams().scale for f in (*fqs, self.act_fq)]
        except RuntimeError:  # nothing observed yet (calibration's first batch)
            return None
        if any(t.numel() != 1 for t in scales):
            return None
        return [float(t) for t in scales]

    def _bias_on_grid(self, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Eval mode: round the bias onto the accumulator grid s_x·s_w (float64, as
        ``convert`` does), so the fake-quant model computes what the integer model does."""
        fq = getattr(self, "_input_fq", None)
        if self.training or fq is None or not fq.enabled or not self.weight_fq.enabled:
            return b
        try:
            s_x = fq.qparams().scale.double()
            s_w = self.weight_fq.qparams(tuple(w.shape)).scale.double()
        except RuntimeError:  # nothing observed yet (calibration's first batch)
            return b
        if s_x.numel() != 1 or s_w.numel() not in (1, b.numel()):
            return b  # no single accumulator grid per output channel (group/element weights)
        acc = (s_x * s_w).to(b.device)
        return (torch.round(b.double() / acc) * acc).to(b.dtype)

    def _integer_layer(
        self, x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor, b: torch.Tensor, op: Callable[..., torch.Tensor]
    ) -> torch.Tensor | None:
        """Eval mode, scales known: the value of the integer model's output code,
        ``round((Σ k_x·k_w + k_b) · M)`` with ``M = s_w·s_x/s_out`` as ``convert`` writes
        it, from exact codes; else None.

        A float32 conv of the fake-quantized values rounds its sums, and an output that
        lands within that rounding of a tie between two codes goes either way: rare per
        layer, but the flips compound through a deep network (a trained 8-bit
        MobileNet-style model's logits differed from the integer model's on 1 % of
        codes, by up to 2). On the codes themselves the sums are of integers: exact in
        float32 while no partial sum can reach 2^24 (fan-in x largest |code| products),
        else computed in float64 (exact for any int32 accumulator).
        """
        sc = self._integer_scales(1)
        if sc is None:
            return None
        qp = self.weight_fq.qparams(tuple(w.shape))
        out_ch = w.shape[0]
        if qp.scale.numel() not in (1, out_ch) or bool((qp.zero_point != 0).any()):
            return None  # no single accumulator grid per output channel
        s_x, s_o = sc
        s_w = qp.scale.double().reshape(-1).expand(out_ch).to(x.device)
        k_w = torch.round(wq.detach().double() / s_w.reshape(-1, *[1] * (w.dim() - 1)))
        k_b = torch.round(b.detach().double() / (s_x * s_w))
        xq = self._input_fq.qparams()
        z_x = int(xq.zero_point.reshape(-1)[0])
        bound = w[0].numel() * max(abs(xq.qmin - z_x), abs(xq.qmax - z_x)) * float(k_w.abs().max()) + float(k_b.abs().max())
        if bound < 2**24 and x.device.type == "cpu":
            # x holds fl(k·s_x) with |k| far below 2^22, so x / s_x in float32 is within
            # far less than 0.5 of k: the rounding recovers k exactly. (Not on CUDA,
            # where cuDNN may run a float32 conv in TF32 and round the products.)
            acc = op(torch.round(x / s_x), k_w.float(), k_b.float()).double()
        else:
            acc = op(_centred_codes(x, s_x), k_w, k_b)
        m = s_w.float().double() * s_x / s_o  # the stored float32 w_scale, as convert reads it
        # channels: a linear's last axis, a conv's axis 1
        m = m if op is F.linear else m.reshape(-1, *[1] * (acc.dim() - 2))
        return acc.mul_(m).round_().mul_(s_o).float()  # _requantized_value, in place

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        maxpool = getattr(self, "maxpool", None)
        numel = None
        if maxpool is not None:
            # Max pooling commutes with ReLU and with fake quantization (both monotone
            # non-decreasing), so pooling first gives the same values with a quarter of
            # the element-wise quantizer work. Gradients are the same too (only the
            # window maxima receive any), except where quantization ties a window: the
            # gradient then reaches the true maximum, not the first of the tied codes.
            # LSQ's gradient scale keeps counting the unpooled values, as before.
            numel = y.numel()
            y = maxpool(y)
        return self.act_fq(y, numel, self._act_clamp())

    def _act_clamp(self) -> tuple[float | None, float | None] | None:
        # The quantizer applies the clamp, a fused ReLU included (a clamp at 0): its
        # fused kernels do it in the same pass as the quantization, forward and backward,
        # so the ReLU costs no pass of its own over the activation and its gradient.
        return _with_relu(self.clamp) if self.relu else self.clamp


class QuantConv2d(_QuantCompute):
    """Conv2d (+ BatchNorm folded for QAT) (+ ReLU) (+ MaxPool2d), weight fake-quant,
    output fake-quant.

    BatchNorm folding follows Jacob et al. (CVPR 2018) as torch.ao does: while BN
    statistics are live, the conv runs on folded-and-quantized weights with the
    running-std scale undone, and BN normalises with batch statistics; once frozen
    (``freeze_bn``) or in eval mode, the layer is exactly the folded conv that the
    integer model runs: ``conv(x, fq(W·γ/σ)) + (β − γμ/σ + γ·b/σ)``.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d | None,
        relu: bool,
        w_spec: QuantSpec,
        a_spec: QuantSpec,
        w_ste: str = "clipped",
        a_ste: str = "clipped",
        maxpool: nn.MaxPool2d | None = None,
    ) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"Conv2d padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
        self.conv = conv
        self.bn = bn
        self.relu = relu
        self.maxpool = maxpool
        self.bn_frozen = False
        self.weight_fq = FakeQuant(w_spec, w_ste, "weight")
        self.act_fq = FakeQuant(a_spec, a_ste, "act")

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias with BatchNorm's running statistics folded in."""
        w = self.conv.weight
        b = self.conv.bias if self.conv.bias is not None else torch.zeros(w.shape[0], device=w.device)
        if self.bn is None:
            return w, b
        bn = self.bn
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        f = gamma / std
        return w * f.reshape(-1, 1, 1, 1), beta + (b - bn.running_mean) * f

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is None or self.bn_frozen or not self.training:
            w, b = self.folded()
            wq = self.weight_fq(w)
            exact = self._integer_layer(x, w, wq, b, self._conv)
            if exact is not None:
                return self._out(exact)
            return self._out(self._conv(x, wq, self._bias_on_grid(b, w)))
        bn = self.bn
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        f = gamma / std
        # conv(x, fq(W·f)) / f, with the division moved onto the weights (the conv is
        # linear in them): the same function, without full-size passes over the
        # activation and its gradient to undo the scale. The quantizer takes the product
        # and the quotient into its own call (``fold``): four small autograd ops fewer.
        y = self._conv(x, self.weight_fq(self.conv.weight, None, None, f), None)
        if self.conv.bias is not None:
            y = y + self.conv.bias.reshape(1, -1, 1, 1)
        if self.maxpool is None:
            # BN and the quantizer in one kernel call where they take it: the BN output is
            # never written, and an observed range comes from the statistics pass.
            out = self.act_fq.after_batch_norm(y, bn, self._act_clamp())
            if out is not None:
                return out
        return self._out(bn(y))


class QuantLinear(_QuantCompute):
    def __init__(
        self, linear: nn.Linear, relu: bool, w_spec: QuantSpec, a_spec: QuantSpec, w_ste: str = "clipped", a_ste: str = "clipped"
    ) -> None:
        super().__init__()
        self.linear = linear
        self.relu = relu
        self.weight_fq = FakeQuant(w_spec, w_ste, "weight")
        self.act_fq = FakeQuant(a_spec, a_ste, "act")

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.linear.weight
        b = self.linear.bias if self.linear.bias is not None else torch.zeros(w.shape[0], device=w.device)
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.folded()
        wq = self.weight_fq(w)
        exact = self._integer_layer(x, w, wq, b, F.linear)
        if exact is not None:
            return self._out(exact)
        return self._out(F.linear(x, wq, self._bias_on_grid(b, w)))


class QuantAdd(_QuantCompute):
    """Residual add (+ ReLU) with its own output quantizer."""

    def __init__(self, relu: bool, a_spec: QuantSpec, a_ste: str = "clipped") -> None:
        super().__init__()
        self.relu = relu
        self.act_fq = FakeQuant(a_spec, a_ste, "act")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sc = self._integer_scales(2)
        if sc is None:
            return self._out(a + b)
        s_a, s_b, s_o = sc
        # round(d_a·(s_a/s_o) + d_b·(s_b/s_o)), the integer model's float rounding
        acc = _centred_codes(a, s_a) * (s_a / s_o) + _centred_codes(b, s_b) * (s_b / s_o)
        return self._out(_requantized_value(acc, 1.0, s_o))


class QuantMul(_QuantCompute):
    """Elementwise product of two quantized tensors (broadcasting, e.g. a squeeze-
    excitation gate [N, C, 1, 1] times its features) with its own output quantizer."""

    def __init__(self, a_spec: QuantSpec, a_ste: str = "clipped") -> None:
        super().__init__()
        self.relu = False
        self.act_fq = FakeQuant(a_spec, a_ste, "act")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sc = self._integer_scales(2)
        if sc is None:
            return self._out(a * b)
        s_a, s_b, s_o = sc
        acc = _centred_codes(a, s_a) * _centred_codes(b, s_b)
        return self._out(_requantized_value(acc, s_a * s_b / s_o, s_o))


class QuantCat(_QuantCompute):
    """Concatenation with its own output quantizer: the integer model requantizes each
    input onto it, so the producers' (possibly learned) scales stay independent."""

    def __init__(self, dim: int, a_spec: QuantSpec, a_ste: str = "clipped") -> None:
        super().__init__()
        self.dim = dim
        self.relu = False
        self.act_fq = FakeQuant(a_spec, a_ste, "act")

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        sc = self._integer_scales(len(xs))
        if sc is None:
            return self._out(torch.cat(xs, self.dim))
        s_o = sc[-1]
        # each input requantized onto the output's grid, round(d·(s_i/s_o)), as the integer model does
        parts = [_requantized_value(_centred_codes(x, s), s / s_o, s_o) for x, s in zip(xs, sc[:-1])]
        return self._out(torch.cat(parts, self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class QuantMean(_QuantCompute):
    """Mean over non-batch axes (global pooling written as ``x.mean((2, 3))``)."""

    def __init__(self, dims: tuple[int, ...], keepdim: bool, a_spec: QuantSpec, a_ste: str = "clipped") -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.keepdim = keepdim
        self.relu = False
        self.act_fq = FakeQuant(a_spec, a_ste, "act")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = self._integer_scales(1)
        if sc is None:
            return self._out(x.mean(self.dims, keepdim=self.keepdim))
        s_x, s_o = sc
        count = 1
        for d in {d % x.dim() for d in self.dims}:
            count *= x.shape[d]
        acc = _centred_codes(x, s_x).sum(self.dims, keepdim=self.keepdim)
        return self._out(_requantized_value(acc, s_x / (count * s_o), s_o))

    def extra_repr(self) -> str:
        return f"dims={self.dims}, keepdim={self.keepdim}"


LUT_FUNCTIONS = {
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,
}


class QuantLUT(_QuantCompute):
    """A smooth activation with its own output quantizer; its integer form is a table
    over the input's codes, built by running this module's own arithmetic."""

    def __init__(self, fn: str, a_spec: QuantSpec, a_ste: str = "clipped", **options: str) -> None:
        super().__init__()
        if fn not in LUT_FUNCTIONS:
            raise ValueError(f"activation {fn!r} is unknown; expected one of {', '.join(LUT_FUNCTIONS)}")
        self.fn = fn
        self.options = dict(options)
        self.relu = False
        self.act_fq = FakeQuant(a_spec, a_ste, "act")

    def apply_fn(self, x: torch.Tensor) -> torch.Tensor:
        return LUT_FUNCTIONS[self.fn](x, **self.options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(self.apply_fn(x))

    def extra_repr(self) -> str:
        return f"fn={self.fn}" + "".join(f", {k}={v}" for k, v in self.options.items())


class QuantClamp(nn.Module):
    """A clamp that no compute layer absorbed: it keeps its input's qparams and clamps
    at the grid points of the bounds, ``s·(lo − z)`` and ``s·(hi − z)``, which is
    what the integer model's ``min(max(q, lo), hi)`` on codes computes."""

    def __init__(self, lo: float | None, hi: float | None) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def set_input_quantizer(self, fq: FakeQuant) -> None:
        object.__setattr__(self, "_input_fq", fq)

    def grid_bounds(self) -> tuple[int, int] | None:
        """The integer bounds on the input's grid, or None before its range is known."""
        fq = getattr(self, "_input_fq", None)
        if fq is None or not fq.enabled:
            return None
        try:
            return clamp_codes(fq, (self.lo, self.hi))
        except RuntimeError:  # nothing observed yet (calibration's first batch)
            return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.grid_bounds()
        if codes is None:
            return x.clamp(self.lo, self.hi)
        qp = self._input_fq.qparams()
        s = qp.scale.float().reshape(()).to(x.device)
        z = float(qp.zero_point.reshape(()))
        lo, hi = ((torch.tensor(float(c) - z, dtype=torch.float32, device=x.device) * s) for c in codes)
        return torch.maximum(torch.minimum(x, hi), lo)

    def extra_repr(self) -> str:
        return f"lo={self.lo}, hi={self.hi}"


class QuantAvgPool(_QuantCompute):
    """Average pooling: a sum of codes and a requantization in the integer model."""

    def __init__(self, pool: nn.Module, a_spec: QuantSpec, a_ste: str = "clipped") -> None:
        super().__init__()
        if isinstance(pool, nn.AvgPool2d) and (pool.ceil_mode or (pool.padding and pool.count_include_pad is False)):
            raise ValueError("AvgPool2d with ceil_mode or count_include_pad=False is not supported")
        self.pool = pool
        self.relu = False
        self.act_fq = FakeQuant(a_spec, a_ste, "act")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = self._integer_scales(1)
        if sc is None or x.dim() != 4:
            return self._out(self.pool(x))
        s_x, s_o = sc
        k = _centred_codes(x, s_x)
        p = self.pool
        if isinstance(p, nn.AvgPool2d):
            kh, kw = _pair(p.kernel_size)
            if p.divisor_override:
                return self._out(self.pool(x))
            acc = F.avg_pool2d(k, (kh, kw), p.stride or (kh, kw), p.padding, count_include_pad=True, divisor_override=1)
            return self._out(_requantized_value(acc, s_x / (kh * kw * s_o), s_o))
        out = adaptive_output_size(p.output_size, x.shape[-2:])
        count = adaptive_bin_counts(x.shape[-2], x.shape[-1], out).to(x.device)
        # An exact sum: the float64 mean of integers times the bin's size, rounded.
        acc = torch.round(F.adaptive_avg_pool2d(k, out) * count)
        if x.shape[-2] % out[0] == 0 and x.shape[-1] % out[1] == 0:
            # Even bins run as a plain pool with one multiplier, as convert writes them.
            c = (x.shape[-2] // out[0]) * (x.shape[-1] // out[1])
            return self._out(_requantized_value(acc, s_x / (c * s_o), s_o))
        return self._out(_requantized_value(acc, s_x / (count.double() * s_o), s_o))


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def adaptive_output_size(size: int | None | tuple[int | None, ...], in_hw: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """AdaptiveAvgPool2d's output size with ``None`` (keep the input's) resolved."""
    oh, ow = (size, size) if not isinstance(size, (tuple, list)) else size
    return (int(in_hw[0]) if oh is None else int(oh), int(in_hw[1]) if ow is None else int(ow))


def adaptive_bins(n: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins along one axis: [floor(i·n/out), ceil((i+1)·n/out))."""
    return [((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]


def adaptive_bin_counts(h: int, w: int, out: tuple[int, int]) -> torch.Tensor:
    """Each output pixel's bin size, int32 [oh, ow]."""
    rows, cols = adaptive_bins(h, out[0]), adaptive_bins(w, out[1])
    return torch.tensor([[(r1 - r0) * (c1 - c0) for c0, c1 in cols] for r0, r1 in rows], dtype=torch.int32)


QUANT_COMPUTE = (QuantConv2d, QuantLinear, QuantAdd, QuantAvgPool, QuantMul, QuantCat, QuantMean, QuantLUT)
