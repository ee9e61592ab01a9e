"""The qat_vs_ptq study's weight-granularity part: PTQ per-tensor vs per-channel side by
side, and the per-layer weight ranges that explain it (depthwise convolutions)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from workbook.studies import accuracy


def _rows(seed: int, fp: float, tensor: float, channel: float, model: str = "mobilenet") -> list[dict]:
    base = {"model": model, "estimator": "minmax", "seed": seed, "status": "ok", "ste": "clipped", "w_bits": 8, "a_bits": 8}
    return [
        {**base, "method": "fp32", "granularity": "channel", "test_acc": fp, "int_acc": math.nan},
        {**base, "method": "ptq", "granularity": "tensor", "test_acc": tensor, "int_acc": tensor},
        {**base, "method": "ptq", "granularity": "channel", "test_acc": channel, "int_acc": channel - 0.001},
    ]


def test_granularity_table_pairs_the_two_ptq_trials() -> None:
    df = pd.DataFrame(_rows(0, 0.90, 0.40, 0.89) + _rows(1, 0.92, 0.50, 0.91))
    t = accuracy.granularity_table(df)
    assert len(t) == 1
    r = t.iloc[0]
    assert r["FP32"] == pytest.approx(91.0)
    assert r["per-tensor"] == pytest.approx(45.0) and r["per-channel"] == pytest.approx(90.0)
    assert r["per-channel − per-tensor"] == pytest.approx(45.0)
    assert r["IntModel per-channel"] == pytest.approx(89.9)
    assert accuracy.plot_granularity(df) is not None


def test_granularity_table_is_empty_without_both() -> None:
    df = pd.DataFrame(_rows(0, 0.9, 0.4, 0.89))
    only_channel = df[df.granularity == "channel"]
    assert accuracy.granularity_table(only_channel).empty
    assert accuracy.plot_granularity(only_channel) is None
    failed = df.assign(status=["ok", "failed", "ok"])
    assert accuracy.granularity_table(failed).empty
    assert list(accuracy.granularity_table(only_channel).columns) == accuracy.GRAN_COLUMNS


def _conv_bn(groups: int, gammas: torch.Tensor) -> nn.Sequential:
    c = gammas.numel()
    m = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(c))
    with torch.no_grad():
        m[1].weight.copy_(gammas)
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].running_mean.normal_()
    return m.eval()


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), depthwise=st.booleans())
def test_folded_weights_match_the_bn_forward(seed: int, depthwise: bool) -> None:
    """Reference: conv with the folded weights + BN's shift equals BN(conv(x)) in eval mode."""
    g = torch.Generator().manual_seed(seed)
    gammas = torch.rand(6, generator=g) * 3 + 0.1
    torch.manual_seed(seed)
    m = _conv_bn(6 if depthwise else 1, gammas)
    ((name, layer, w),) = accuracy.folded_weights(m)
    bn = m[1]
    f = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * f
    x = torch.randn(2, 6, 5, 5, generator=g)
    y = nn.functional.conv2d(x, w, shift, padding=1, groups=layer.groups)
    torch.testing.assert_close(y, m(x).detach(), rtol=1e-5, atol=1e-5)
    assert name == "0" and accuracy.layer_kind(layer) == ("depthwise" if depthwise else "conv")


def test_wide_channel_ranges_cost_per_tensor_sqnr() -> None:
    torch.manual_seed(0)
    spread = torch.logspace(-2, 0, 16)  # BN scales over two decades, as trained depthwise layers have
    wide = accuracy.weight_range_table(_conv_bn(16, spread))
    even = accuracy.weight_range_table(_conv_bn(16, torch.ones(16)))
    assert wide.kind.tolist() == ["depthwise"]
    assert wide["range spread"].iloc[0] > 5 * even["range spread"].iloc[0]
    assert wide["per-channel gain (dB)"].iloc[0] > 6 > 3 > even["per-channel gain (dB)"].iloc[0]
    assert (wide["SQNR per-channel W8 (dB)"] > 40).all()


def test_layer_kinds() -> None:
    assert accuracy.layer_kind(nn.Linear(3, 4)) == "linear"
    assert accuracy.layer_kind(nn.Conv2d(8, 8, 3, groups=8)) == "depthwise"
    assert accuracy.layer_kind(nn.Conv2d(8, 4, 1)) == "pointwise"
    assert accuracy.layer_kind(nn.Conv2d(8, 8, 3, groups=2)) == "conv"


def test_depthwise_effect_reads_the_runs_fp32_model(tmp_path) -> None:
    from qatlab.config import TrainConfig
    from qatlab.models import build_model
    from qatlab.train import save_checkpoint

    torch.manual_seed(0)
    model = build_model("mobilenet")
    with torch.no_grad():  # trained depthwise layers' BN scales spread over decades
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.logspace(-2, 0, m.num_features)[torch.randperm(m.num_features)])
    trial = tmp_path / "trials" / "abc"
    trial.mkdir(parents=True)
    save_checkpoint(model, TrainConfig(model="mobilenet", method="fp32"), trial / "model.pt", 10, (1, 28, 28))
    df = pd.DataFrame(_rows(0, 0.9, 0.4, 0.89))
    t = accuracy.depthwise_effect(tmp_path, df).set_index("kind")
    assert set(t.index) == {"conv", "depthwise", "pointwise", "linear"}
    assert t.loc["depthwise", "layers"] == 6
    assert accuracy.depthwise_effect(tmp_path, df[df.granularity == "channel"]).empty
    assert accuracy.depthwise_effect(None, df).empty
