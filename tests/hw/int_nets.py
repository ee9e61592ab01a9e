"""Hand-built IntModels with every op kind the hardware models cost (format version 2).

Built op by op (no training, no converter), with the attrs and tensors the op
contract names, so the simulators' tests do not depend on the converter.
"""

from __future__ import annotations

import torch

from qatlab.intmodel.model import ActQ, IntModel, IntOp

S8 = ActQ(0.05, 0, -128, 127)
U8 = ActQ(0.1, 0, 0, 255)
U8B = ActQ(0.07, 3, 0, 255)
U4 = ActQ(0.2, 0, 0, 15)


def _requant(n: int = 1, m: float = 0.01) -> dict[str, torch.Tensor]:
    return {
        "multiplier": torch.full((n,), m, dtype=torch.float64),
        "fixed_multiplier": torch.full((n,), 1 << 30, dtype=torch.int32),
        "shift": torch.full((n,), -6, dtype=torch.int32),
    }


def conv(
    name: str,
    src: str,
    in_shape: tuple[int, int, int],
    out_c: int,
    k: int,
    *,
    groups: int = 1,
    stride: int = 1,
    pad: int = 0,
    out_q: ActQ = U8,
    w_bits: int = 8,
    a_bits: int = 8,
    seed: int = 0,
    **attrs: object,
) -> IntOp:
    c, h, w = in_shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    g = torch.Generator().manual_seed(seed)
    lim = 1 << (w_bits - 1)
    weight = torch.randint(-lim + 1, lim, (out_c, c // groups, k, k), generator=g, dtype=torch.int8)
    return IntOp(
        "conv",
        name,
        [src],
        name,
        out_q,
        {
            "stride": (stride, stride),
            "padding": (pad, pad),
            "dilation": (1, 1),
            "groups": groups,
            "kernel": (k, k),
            "in_shape": in_shape,
            "w_bits": w_bits,
            "a_bits": a_bits,
            "relu": False,
            "out_shape": (out_c, oh, ow),
            **attrs,
        },
        {"weight": weight, "bias": torch.zeros(out_c, dtype=torch.int32), **_requant(out_c)},
    )


def linear(name: str, src: str, in_f: int, out_f: int, out_q: ActQ = S8, seed: int = 0) -> IntOp:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randint(-127, 128, (out_f, in_f), generator=g, dtype=torch.int8)
    return IntOp(
        "linear",
        name,
        [src],
        name,
        out_q,
        {"w_bits": 8, "a_bits": 8, "relu": False, "in_shape": (in_f,), "out_shape": (out_f,)},
        {"weight": weight, "bias": torch.zeros(out_f, dtype=torch.int32), **_requant(out_f)},
    )


def op(
    kind: str, name: str, inputs: list[str], out_q: ActQ, out_shape: tuple[int, ...], tensors: dict | None = None, **attrs: object
) -> IntOp:
    return IntOp(kind, name, inputs, name, out_q, {"out_shape": out_shape, **attrs}, tensors or {})


def every_kind() -> IntModel:
    """A small CNN touching every op kind: depthwise and grouped convs, lookup tables
    (monotone and not), window, adaptive and mean pooling, SE-style mul, add, cat
    (one input requantized, one already on the output grid), clamp, relu and the
    pass-through kinds."""
    mono = torch.clamp(torch.arange(256, dtype=torch.int32) // 2, 0, 255)
    bump = (torch.arange(256, dtype=torch.int32) - 128).abs()  # not monotone: a ROM, not thresholds
    ops = [
        op("quantize", "q", ["x"], S8, (3, 10, 10), in_shape=(3, 10, 10)),
        conv("c1", "q", (3, 10, 10), 8, 3, pad=1, relu=True),
        conv("dw", "c1", (8, 10, 10), 8, 3, groups=8, pad=1, clamp=[0, 60], seed=1),
        conv("gc", "dw", (8, 10, 10), 8, 1, groups=2, seed=2),
        op("lut", "act", ["gc"], U8, (8, 10, 10), {"table": mono}, fn="hardsigmoid"),
        op("lut", "act2", ["act"], U8, (8, 10, 10), {"table": bump}, fn="hardswish"),
        op("maxpool", "mp", ["act2"], U8, (8, 5, 5), kernel=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=False),
        op(
            "avgpool",
            "ap",
            ["mp"],
            U8,
            (8, 5, 5),
            kernel=(3, 3),
            stride=(1, 1),
            padding=(1, 1),
            count=9,
            multiplier=0.1,
            fixed_multiplier=1 << 30,
            shift=-3,
        ),
        op(
            "avgpool",
            "aap",
            ["ap"],
            U8B,
            (8, 3, 3),
            {"count": torch.tensor([[4, 6, 4], [6, 9, 6], [4, 6, 4]], dtype=torch.int32), **_requant(9)},
            adaptive=True,
            output_size=(3, 3),
        ),
        op("mean", "se", ["aap"], U8, (8, 1, 1), _requant(), dims=(2, 3), keepdim=True, count=9),
        op("mul", "gate", ["se", "aap"], U8B, (8, 3, 3), _requant()),
        op(
            "add",
            "res",
            ["gate", "aap"],
            U8,
            (8, 3, 3),
            {**{f"{k}_a": v for k, v in _requant().items()}, **{f"{k}_b": v for k, v in _requant().items()}},
            relu=True,
        ),
        op(
            "cat",
            "cat",
            ["res", "aap"],
            U8B,
            (16, 3, 3),
            {**{f"{k}_0": v for k, v in _requant().items()}, **{f"{k}_1": v for k, v in _requant().items()}},
            axis=1,
        ),
        op("clamp", "cl", ["cat"], U8B, (16, 3, 3), lo=3, hi=200),
        op("relu", "rl", ["cl"], U8B, (16, 3, 3)),
        op("slice", "sl", ["rl"], U8B, (12, 3, 3), axis=1, start=0, end=12),
        op("permute", "pm", ["sl"], U8B, (3, 3, 12), dims=(0, 2, 3, 1)),
        op("reshape", "rs", ["pm"], U8B, (9, 12)),
        op("flatten", "fl", ["rs"], U8B, (108,)),
        linear("fc", "fl", 108, 10),
    ]
    return IntModel(ops, "x", "fc", (3, 10, 10), "float", {})


def depthwise_only(channels: int = 8, hw: int = 12, k: int = 3, mult: int = 1) -> IntModel:
    """quantize -> one depthwise conv (``mult`` filters per channel)."""
    ops = [
        op("quantize", "q", ["x"], U8, (channels, hw, hw), in_shape=(channels, hw, hw)),
        conv("dw", "q", (channels, hw, hw), channels * mult, k, groups=channels, seed=3),
    ]
    return IntModel(ops, "x", "dw", (channels, hw, hw), "float", {})
