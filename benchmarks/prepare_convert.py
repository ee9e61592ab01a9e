"""prepare_qat + convert on a ResNet-50-sized model, against baselines in the same run.

    python benchmarks/prepare_convert.py [--repeats 3] [--json FILE]

The model is defined here (bottleneck blocks [3, 4, 6, 3], widths 64..2048, 224x224
inputs, 1000 classes): 53 convs with BN, 16 residual adds. Timed: ``prepare_qat``
and ``convert`` (calibration, one batch of 2, is not); baselines: ``fx.symbolic_trace``
of the float model and one FP32 forward pass on a batch of 1. Prints one JSON line;
``--json`` also writes it. Target: prepare + convert within 10 s on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Callable

import torch
from torch import fx, nn

from qatlab.atomic import write_json
from qatlab.intmodel import convert
from qatlab.nn import calibrate, prepare_qat
from qatlab.quant import QuantSpec


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000, layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks: list[nn.Module] = []
        cin = 64
        for i, n in enumerate(layers):
            width = 64 * 2**i
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * Bottleneck.expansion
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


def _best(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench(repeats: int = 3) -> dict[str, object]:
    torch.manual_seed(0)
    model = ResNet50().eval()
    shape = (3, 224, 224)
    w_spec, a_spec = QuantSpec(bits=8, granularity="channel"), QuantSpec(bits=8, symmetric=False)
    x1 = torch.randn(1, *shape)

    def forward() -> None:
        with torch.no_grad():
            model(x1)

    t_trace = _best(lambda: fx.symbolic_trace(model), repeats)
    t_forward = _best(forward, repeats)
    t_prepare = _best(lambda: prepare_qat(model, w_spec, a_spec), repeats)
    q = prepare_qat(model, w_spec, a_spec)
    calibrate(q, [torch.randn(2, *shape)])
    t_convert = _best(lambda: convert(q, shape), repeats)
    total = t_prepare + t_convert
    return {
        "bench": "prepare_convert",
        "model": "resnet50 (own definition), 224x224, 1000 classes",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "prepare_s": round(t_prepare, 3),
        "convert_s": round(t_convert, 3),
        "prepare_convert_s": round(total, 3),
        "symbolic_trace_s": round(t_trace, 4),
        "fp32_forward_b1_s": round(t_forward, 4),
        "ratio_to_trace": round(total / t_trace, 1),
        "ratio_to_forward": round(total / t_forward, 1),
        "target_s": 10.0,
        "within_target": total <= 10.0,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    row = bench(args.repeats)
    print(json.dumps(row))
    if args.json:
        write_json(args.json, row)


if __name__ == "__main__":
    main()
