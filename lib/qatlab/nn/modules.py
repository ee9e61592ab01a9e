"""QAT modules: compute layers with weight and output quantizers, and the quantized glue ops.

Each compute module owns the quantizer of its *output*, so every value flowing
between modules is on an integer grid, and ``convert`` reads one module at a time.
"""
from __future__ import annotations

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


class _QuantCompute(nn.Module):
    relu: bool

    def set_input_quantizer(self, fq: FakeQuant) -> None:
        # A plain reference, not a submodule: the quantizer belongs to the upstream layer.
        object.__setattr__(self, "_input_fq", fq)

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
        if self.relu:
            y = F.relu(y)
        return self.act_fq(y, numel)


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

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is None or self.bn_frozen or not self.training:
            w, b = self.folded()
            wq = self.weight_fq(w)
            return self._out(self._conv(x, wq, self._bias_on_grid(b, w)))
        bn = self.bn
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        f = gamma / std
        # conv(x, fq(W·f)) / f, with the division moved onto the weights (the conv is
        # linear in them): the same function, without full-size passes over the
        # activation and its gradient to undo the scale.
        y = self._conv(x, self.weight_fq(self.conv.weight * f.reshape(-1, 1, 1, 1)) / f.reshape(-1, 1, 1, 1), None)
        if self.conv.bias is not None:
            y = y + self.conv.bias.reshape(1, -1, 1, 1)
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
        return self._out(F.linear(x, wq, self._bias_on_grid(b, w)))


class QuantAdd(_QuantCompute):
    """Residual add (+ ReLU) with its own output quantizer."""

    def __init__(self, relu: bool, a_spec: QuantSpec, a_ste: str = "clipped") -> None:
        super().__init__()
        self.relu = relu
        self.act_fq = FakeQuant(a_spec, a_ste, "act")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._out(a + b)


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
        return self._out(self.pool(x))


QUANT_COMPUTE = (QuantConv2d, QuantLinear, QuantAdd, QuantAvgPool)
