"""The model zoo: small image classifiers that the QAT pass can rewrite.

Why the models look the way they do: ``prepare_qat`` rewrites them with
``torch.fx.symbolic_trace``, folds every BatchNorm into the conv before it, and
``convert`` turns the result into integer layers. So every model here

- traces with fx (no data-dependent control flow, shapes fixed at build time),
- uses only Conv2d, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
  Flatten and Linear modules, plus ``+`` for residual adds; the MobileNet-style
  model adds ReLU6, Hardswish, Hardsigmoid and ``*`` for its squeeze-excitation gate,
- puts each BatchNorm2d directly after its Conv2d, which has ``bias=False`` (the
  folded BN supplies the bias); only the squeeze-excitation 1x1 convs, which have
  no BN, carry their own bias,
- has no dropout (it has no integer meaning and the nets are small),
- gives each ReLU its own module instance, so a quantizer can be attached per use.

Initialisation is PyTorch's default, so ``torch.manual_seed`` before
:func:`build_model` fixes the weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MODELS = ("mlp", "lenet", "resnet8", "mobilenet")
DEFAULT_MODEL = "lenet"


def _check_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)
    ):
        raise ValueError(f"input_shape must be (C, H, W) with positive ints, got {input_shape!r}")
    return tuple(input_shape)  # type: ignore[return-value]


def mlp(num_classes: int, input_shape: tuple[int, int, int], hidden: tuple[int, int] = (256, 128)) -> nn.Sequential:
    """Three Linear layers: the baseline with no convolution at all."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, hidden[0]),
        nn.ReLU(),
        nn.Linear(hidden[0], hidden[1]),
        nn.ReLU(),
        nn.Linear(hidden[1], num_classes),
    )


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


def lenet(num_classes: int, input_shape: tuple[int, int, int], channels: tuple[int, int] = (32, 64), hidden: int = 128) -> nn.Sequential:
    """LeNet with 3x3 convs and BatchNorm: the default CNN.

    32/64 channels and a 128-wide hidden layer reach ~91-92% on Fashion-MNIST in a
    few Adam epochs while one epoch stays well under a minute on two CPU cores.
    Each 2x2 max-pool floors odd sizes (8 -> 4 -> 2 for digits, 28 -> 14 -> 7).
    """
    c, h, w = input_shape
    flat = channels[1] * (h // 4) * (w // 4)
    if flat == 0:
        raise ValueError(f"input_shape {input_shape!r} is too small for lenet's two 2x2 pools (needs H, W >= 4)")
    return nn.Sequential(
        *_conv_bn_relu(c, channels[0]),
        nn.MaxPool2d(2),
        *_conv_bn_relu(channels[0], channels[1]),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut; a 1x1 conv-BN projection where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        # Decided at build time, never in forward, so fx sees a fixed graph.
        self.shortcut: nn.Module = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu2(out)


class ResNet8(nn.Module):
    """ResNet-8: a stem and three one-block stages (stride 1, 2, 2), global average pool, Linear.

    Small enough for CPU sweeps, but it has what LeNet lacks and quantization cares
    about: residual adds (two quantized branches meeting) and 1x1 projections.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        c = input_shape[0]
        self.stem = nn.Sequential(*_conv_bn_relu(c, widths[0]))
        self.layer1 = BasicBlock(widths[0], widths[0], stride=1)
        self.layer2 = BasicBlock(widths[0], widths[1], stride=2)
        self.layer3 = BasicBlock(widths[1], widths[2], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int, act: type[nn.Module] | None, groups: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return layers


class SqueezeExcite(nn.Module):
    """``x * hardsigmoid(fc2(relu(fc1(mean(x)))))`` with 1x1 convs as the fcs (MobileNetV3).

    The mean is an ``AdaptiveAvgPool2d(1)`` module, so the graph names it as a layer
    and keeps the (N, C, 1, 1) shape that broadcasts in the gating product.
    """

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """1x1 expansion, depthwise 3x3, optional squeeze-excitation, 1x1 linear projection;
    a residual add where input and output shapes match (MobileNetV2/V3)."""

    def __init__(self, cin: int, expanded: int, cout: int, stride: int, se: bool, act: type[nn.Module]) -> None:
        super().__init__()
        # Decided at build time, never in forward, so fx sees a fixed graph.
        self.expand: nn.Module = nn.Sequential(*_conv_bn_act(cin, expanded, 1, 1, act)) if expanded != cin else nn.Identity()
        self.depthwise = nn.Sequential(*_conv_bn_act(expanded, expanded, 3, stride, act, groups=expanded))
        self.se: nn.Module = SqueezeExcite(expanded, _round8(expanded // 4)) if se else nn.Identity()
        self.project = nn.Sequential(*_conv_bn_act(expanded, cout, 1, 1, None))
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.use_residual:
            out = out + x
        return out


def _round8(c: int) -> int:
    return max(8, (c + 4) // 8 * 8)


# (expanded, out, stride, squeeze-excitation, activation) per inverted residual block.
_MOBILENET_BLOCKS: tuple[tuple[int, int, int, bool, type[nn.Module]], ...] = (
    (16, 16, 1, True, nn.ReLU6),
    (64, 24, 2, False, nn.ReLU6),
    (72, 24, 1, False, nn.ReLU6),
    (96, 40, 1, True, nn.Hardswish),
    (120, 40, 1, True, nn.Hardswish),
    (160, 48, 2, True, nn.Hardswish),
)


class MobileNet(nn.Module):
    """A MobileNetV3-style CNN for small grayscale images (~105k parameters).

    Stem conv (stride 2, hardswish), six inverted residual blocks (depthwise 3x3 convs,
    ReLU6 early and hardswish late, squeeze-excitation with hardsigmoid gating, residual
    adds where shapes match), a 1x1 conv, global average pool and a two-layer head.
    Two more stride-2 stages take 28x28 to 4x4. Depthwise convs are what makes it
    interesting to quantize: with one 3x3 filter per channel their per-channel weight
    ranges differ widely, so a single per-tensor weight scale fails at 8 bits.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], stem: int = 16, last: int = 192, hidden: int = 128) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_act(input_shape[0], stem, 3, 2, nn.Hardswish))
        blocks: list[nn.Module] = []
        cin = stem
        for expanded, cout, stride, se, act in _MOBILENET_BLOCKS:
            blocks.append(InvertedResidual(cin, expanded, cout, stride, se, act))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.last = nn.Sequential(*_conv_bn_act(cin, last, 1, 1, nn.Hardswish))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(last, hidden)
        self.act = nn.Hardswish()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.blocks(self.stem(x)))
        return self.fc2(self.act(self.fc1(self.flatten(self.pool(x)))))


_BUILDERS: dict[str, Callable[[int, tuple[int, int, int]], nn.Module]] = {
    "mlp": mlp,
    "lenet": lenet,
    "resnet8": ResNet8,
    "mobilenet": MobileNet,
}


def build_model(name: str, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28)) -> nn.Module:
    """A fresh model from the zoo, sized for ``input_shape`` = (C, H, W).

    Seed with ``torch.manual_seed`` first for reproducible weights.
    """
    if name not in _BUILDERS:
        raise ValueError(f"name: unknown model {name!r}; expected one of {', '.join(MODELS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return _BUILDERS[name](num_classes, _check_shape(input_shape))
