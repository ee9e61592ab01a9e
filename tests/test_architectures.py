"""The building blocks of widely used CNNs, written small, through the whole stack:
prepare_qat -> calibrate -> convert -> the IntModel's integer reference executor.

Each block uses the ops the way its architecture does (ReLU6 and depthwise convs in
MobileNetV2, hardswish and hardsigmoid gating in MobileNetV3, SiLU and sigmoid gating
in EfficientNet, chunk/cat/channel shuffle in ShuffleNetV2, ...). The integer model's
output codes must equal the fake-quant model's, every one of them (eval mode computes
the integer arithmetic on exact codes).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qatlab.intmodel import convert, run
from qatlab.intmodel.reference import run_op
from qatlab.nn import calibrate, prepare_qat
from qatlab.quant import QuantSpec


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidualV2(nn.Module):
    """MobileNetV2: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection, residual."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.conv = nn.Sequential(cbr(c, h, 1, act=nn.ReLU6), cbr(h, h, 3, groups=h, act=nn.ReLU6), cbr(h, c, 1, act=None))

    def forward(self, x):
        return x + self.conv(x)


class MobileNetV2ish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8, 3, 2, act=nn.ReLU6)
        self.block = InvertedResidualV2(8)
        self.down = nn.Sequential(cbr(8, 32, 1, act=nn.ReLU6), cbr(32, 32, 3, 2, groups=32, act=nn.ReLU6), cbr(32, 12, 1, act=None))

    def forward(self, x):
        return self.down(self.block(self.stem(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int, gate: type[nn.Module], act: type[nn.Module], pool: str) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "module" else None
        self.fc1 = nn.Conv2d(c, r, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(r, c, 1)
        self.gate = gate()

    def forward(self, x):
        s = self.pool(x) if self.pool is not None else x.mean((2, 3), keepdim=True)
        return self.gate(self.fc2(self.act(self.fc1(s)))) * x


class MobileNetV3Block(nn.Module):
    """MobileNetV3: hardswish, depthwise 5x5, SE with hardsigmoid × tensor, residual."""

    def __init__(self, pool: str) -> None:
        super().__init__()
        self.stem = cbr(3, 8, 3, 2, act=nn.Hardswish)
        self.expand = cbr(8, 24, 1, act=nn.Hardswish)
        self.dw = cbr(24, 24, 5, groups=24, act=nn.Hardswish)
        self.se = SqueezeExcite(24, 8, nn.Hardsigmoid, nn.ReLU, pool)
        self.project = cbr(24, 8, 1, act=None)

    def forward(self, x):
        x = self.stem(x)
        return x + self.project(self.se(self.dw(self.expand(x))))


class MBConv(nn.Module):
    """EfficientNet: SiLU, SE with sigmoid gating (F.silu inside the squeeze), dropout
    standing in for stochastic depth, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8, 3, 2, act=nn.SiLU)
        self.expand = cbr(8, 32, 1, act=nn.SiLU)
        self.dw = cbr(32, 32, 3, groups=32, act=nn.SiLU)
        self.fc1 = nn.Conv2d(32, 4, 1)
        self.fc2 = nn.Conv2d(4, 32, 1)
        self.project = cbr(32, 8, 1, act=None)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(self.expand(x))
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return x + self.drop(self.project(y * s))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 (stride 1): chunk, a 1x1 / depthwise / 1x1 branch, cat, shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(cbr(h, h, 1), cbr(h, h, 3, groups=h, act=None), cbr(h, h, 1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((a, self.branch(b)), dim=1), 2)


class ShuffleNetV2ish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 8, 3, 2), nn.MaxPool2d(3, 1, 1))
        self.units = nn.Sequential(ShuffleUnit(8), ShuffleUnit(8))

    def forward(self, x):
        return self.units(self.stem(x))


class Fire(nn.Module):
    """SqueezeNet: squeeze 1x1, expand 1x1 and 3x3 (ReLU, with bias), cat."""

    def __init__(self, cin: int, s: int, e: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, s, 1)
        self.e1 = nn.Conv2d(s, e, 1)
        self.e3 = nn.Conv2d(s, e, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x), inplace=True)
        return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)


class SqueezeNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.fire = Fire(8, 4, 8)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, 10, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.head(self.fire(self.stem(x))), 1)


class DenseBlock(nn.Module):
    """DenseNet: each layer reads the cat of all features so far and adds `growth`
    channels (conv-BN-ReLU order: BN after a cat has no conv to fold into)."""

    def __init__(self, c: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(cbr(c + i * growth, 2 * growth, 1), cbr(2 * growth, growth, 3)) for i in range(layers))

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class DenseNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8, 3, 2)
        self.block = DenseBlock(8, 4, 3)
        self.transition = nn.Sequential(cbr(20, 10, 1), nn.AvgPool2d(2, 2))

    def forward(self, x):
        return self.transition(self.block(self.stem(x)))


class Inception(nn.Module):
    """GoogLeNet: four branches (1x1, 1x1-3x3, 1x1-3x3, maxpool-1x1) concatenated."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = cbr(cin, 4, 1)
        self.b2 = nn.Sequential(cbr(cin, 4, 1), cbr(4, 6, 3))
        self.b3 = nn.Sequential(cbr(cin, 2, 1), cbr(2, 3, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), cbr(cin, 3, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 8, 3, 2), nn.MaxPool2d(3, 1, 1))
        self.inc = Inception(8)
        self.inc2 = Inception(16)

    def forward(self, x):
        return self.inc2(self.inc(self.stem(x)))


class MNASNetish(nn.Module):
    """MNASNet: inverted residuals with ReLU and 5x5 depthwise convs, x.mean([2, 3]),
    dropout, linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8, 3, 2)
        self.ir = nn.Sequential(cbr(8, 24, 1), cbr(24, 24, 5, groups=24), cbr(24, 8, 1, act=None))
        self.last = cbr(8, 32, 1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 40))

    def forward(self, x):
        x = self.stem(x)
        x = self.last(x + self.ir(x))
        return self.classifier(x.mean([2, 3]))


class VGGish(nn.Module):
    """VGG / AlexNet: AdaptiveAvgPool2d((7, 7)) or ((6, 6)) from a smaller map, i.e.
    PyTorch's uneven, overlapping bins, then the fully connected classifier."""

    def __init__(self, out: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((out, out))
        self.classifier = nn.Sequential(
            nn.Linear(8 * out * out, 64),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(64, 64),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(64, 40),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class RegNetBlock(nn.Module):
    """RegNetY: 1x1, grouped 3x3 (group width 4), SE (ReLU, sigmoid), 1x1, residual ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16, 3, 2)
        self.a = cbr(16, 16, 1)
        self.b = cbr(16, 16, 3, groups=4)
        self.se = SqueezeExcite(16, 4, nn.Sigmoid, nn.ReLU, "method")
        self.c = cbr(16, 16, 1, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.stem(x)
        return self.relu(x + self.c(self.se(self.b(self.a(x)))))


class BasicBlock(nn.Module):
    """ResNet: two 3x3 conv-BN, an identity and a strided 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = cbr(cin, cout, 3, stride)
        self.c2 = cbr(cout, cout, 3, act=None)
        self.down = cbr(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.c2(self.c1(x))
        out += identity
        return F.relu(out)


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 8, 3, 1), nn.MaxPool2d(3, 2, 1))
        self.layer = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))

    def forward(self, x):
        return self.layer(self.stem(x))


class GeluTanhMixer(nn.Module):
    """A ConvNeXt-like block (depthwise 7x7, GELU) with a tanh-bounded head and
    hardtanh / clamp spelt as functions."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8, 3, 2, act=None)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.pw1 = nn.Conv2d(8, 32, 1)
        self.act = nn.GELU()
        self.pw2 = nn.Conv2d(32, 8, 1)
        self.head = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        x = self.stem(x)
        y = x + self.pw2(self.act(self.pw1(self.dw(x))))  # the hardtanh below fuses into this add
        return torch.tanh(self.head(F.hardtanh(y, -2.0, 2.0))).permute(0, 2, 3, 1).clamp(-0.5, 0.5)


ARCHITECTURES = {
    "mobilenet_v2": (MobileNetV2ish, (3, 16, 16)),
    "mobilenet_v3_avgpool": (lambda: MobileNetV3Block("module"), (3, 16, 16)),
    "mobilenet_v3_mean": (lambda: MobileNetV3Block("method"), (3, 16, 16)),
    "efficientnet": (MBConv, (3, 16, 16)),
    "shufflenet_v2": (ShuffleNetV2ish, (3, 16, 16)),
    "squeezenet": (SqueezeNetish, (3, 28, 28)),
    "densenet": (DenseNetish, (3, 16, 16)),
    "googlenet": (GoogLeNetish, (3, 16, 16)),
    "mnasnet": (MNASNetish, (3, 16, 16)),
    "vgg": (lambda: VGGish(7), (3, 16, 16)),
    "alexnet": (lambda: VGGish(6), (3, 28, 28)),
    "regnet": (RegNetBlock, (3, 16, 16)),
    "resnet": (ResNetish, (3, 16, 16)),
    "gelu_tanh": (GeluTanhMixer, (3, 16, 16)),
}


@functools.lru_cache(maxsize=None)
def _quantized(name: str):
    """The calibrated QAT model (eval mode) and its integer model; tests only read them."""
    build, shape = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = build()
    model.train()
    with torch.no_grad():
        for _ in range(3):  # BN statistics that are not the identity
            model(torch.randn(16, *shape))
    model.eval()
    q = prepare_qat(model, QuantSpec(bits=8, granularity="channel"), QuantSpec(bits=8, symmetric=False))
    calibrate(q, [torch.randn(32, *shape) for _ in range(3)])
    q.eval()
    return q, shape, convert(q, shape)


def _codes(v: torch.Tensor, o) -> torch.Tensor:
    return torch.round(v / o.scale + o.zero_point).to(torch.int32)


def _fake_quant_codes(q, im, x) -> dict[str, torch.Tensor]:
    """Every value of the fake-quant model, as codes on the integer model's grids."""
    acts: dict[str, torch.Tensor] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            acts[n.name] = r = super().run_node(n)
            return r

    with torch.no_grad():
        Recorder(q).run(x)
    # A conv with a fused max pool is two integer ops; the fake-quant model holds only
    # the pooled value, under the conv's node name.
    fused = {op.output: op.inputs[0] for op in im.ops if op.kind == "maxpool" and op.output == f"{op.inputs[0]}_pool"}
    return {op.output: _codes(acts[fused.get(op.output, op.output)], op.out_q) for op in im.ops if op.output not in fused.values()}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_int_model_matches_fake_quant(name):
    q, shape, im = _quantized(name)
    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = _codes(q(x), im.output_q)
    got = run(im, x)
    assert got.shape == want.shape
    d = (got - want).abs()
    # Eval mode computes the integer model's arithmetic on exact codes
    # (docs/intmodel-ops.md), so every code is equal, not merely close.
    assert int(d.max()) == 0, (name, float((d > 0).float().mean()), int(d.max()))
    # And op by op, each fed the fake-quant model's own input codes.
    fq = _fake_quant_codes(q, im, x)
    qs = {op.output: op.out_q for op in im.ops}
    vals = {im.input_name: x, **fq}
    for op in im.ops:
        one = run_op(op, vals, qs, im.rounding)
        if op.output in fq:
            assert int((one - fq[op.output]).abs().max()) == 0, (name, op.name)
        else:
            vals[op.output] = one


def test_architectures_use_the_new_op_kinds():
    """Each family of ops is exercised somewhere above."""
    kinds: set[str] = set()
    fns: set[str] = set()
    adaptive = False
    for name in ARCHITECTURES:
        for op in _quantized(name)[2].ops:
            kinds.add(op.kind)
            if op.kind == "lut":
                fns.add(op.attrs["fn"])
            adaptive |= bool(op.attrs.get("adaptive"))
            if op.kind == "conv" and op.attrs["groups"] > 1:
                kinds.add("grouped_conv")
            if "clamp" in op.attrs:
                kinds.add("fused_clamp")
    assert {
        "lut",
        "mul",
        "cat",
        "mean",
        "reshape",
        "permute",
        "slice",
        "clamp",
        "fused_clamp",
        "grouped_conv",
        "add",
        "avgpool",
        "maxpool",
    } <= kinds
    assert fns == {"hardswish", "hardsigmoid", "silu", "sigmoid", "tanh", "gelu"}
    assert adaptive
