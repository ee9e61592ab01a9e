import pytest
import torch
from torch import nn

from qatlab.nn import (
    FakeQuant,
    QuantAdd,
    QuantConv2d,
    QuantLinear,
    UnsupportedLayerError,
    calibrate,
    freeze_bn,
    prepare_qat,
    set_fake_quant,
    set_observe,
)
from qatlab.quant import QuantSpec

W8 = QuantSpec(bits=8, granularity="channel")
A8 = QuantSpec(bits=8, symmetric=False)


class Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.c = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.bn(self.c(x))
        y = torch.relu(y + x)
        return self.fc(torch.flatten(self.pool(y), 1))


def _trained_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model.train()
    for _ in range(3):
        model(torch.randn(16, 1, 8, 8))
    return model.eval()


def test_patterns_are_fused():
    q = prepare_qat(Res(), W8, A8)
    kinds = [type(m) for m in q.modules()]
    assert kinds.count(QuantConv2d) == 2 and kinds.count(QuantLinear) == 1 and kinds.count(QuantAdd) == 1
    stem = q.get_submodule("stem.0")
    assert stem.bn is not None and stem.relu
    add = next(m for m in q.modules() if isinstance(m, QuantAdd))
    assert add.relu


def test_original_model_untouched():
    m = Res()
    prepare_qat(m, W8, A8)
    assert isinstance(m.c, nn.Conv2d) and isinstance(m.bn, nn.BatchNorm2d)


def test_without_fake_quant_the_qat_model_is_the_float_model():
    m = _trained_bn(Res())
    q = prepare_qat(m, W8, A8)
    x = torch.randn(5, 1, 8, 8)
    calibrate(q, [x])
    set_fake_quant(q, False)
    set_observe(q, False)
    q.eval()
    assert torch.allclose(q(x), m(x), atol=1e-5)


def test_8bit_qat_model_is_close_and_training_path_runs():
    m = _trained_bn(Res())
    q = prepare_qat(m, W8, A8, "lsq")
    x = torch.randn(32, 1, 8, 8)
    calibrate(q, [x])
    q.eval()
    assert float((q(x) - m(x)).abs().max()) < 0.1
    q.train()
    q(x).sum().backward()
    conv = q.get_submodule("c")
    assert conv.conv.weight.grad is not None and conv.weight_fq.scale.grad is not None


def test_frozen_bn_equals_folded_conv():
    m = _trained_bn(Res())
    q = prepare_qat(m, W8, A8)
    x = torch.randn(4, 1, 8, 8)
    calibrate(q, [x])
    freeze_bn(q)
    set_observe(q, False)
    q.train()
    conv = q.get_submodule("stem.0")
    w, b = conv.folded()
    inp = torch.randn(2, 1, 8, 8)
    ref = conv.act_fq(torch.relu(nn.functional.conv2d(inp, conv.weight_fq(w), b, padding=1)))
    assert torch.allclose(conv(inp), ref)


def test_first_last_bits_override():
    q = prepare_qat(Res(), QuantSpec(bits=2, granularity="channel"), QuantSpec(bits=2, symmetric=False), first_last_bits=8)
    assert q.get_submodule("stem.0").weight_fq.spec.bits == 8
    assert q.get_submodule("fc").weight_fq.spec.bits == 8
    assert q.get_submodule("c").weight_fq.spec.bits == 2


def test_unsupported_layers_are_named():
    with pytest.raises(UnsupportedLayerError, match="Softplus"):
        prepare_qat(nn.Sequential(nn.Linear(3, 3), nn.Softplus()), W8, A8)
    with pytest.raises(UnsupportedLayerError, match="BatchNorm2d must directly follow"):
        prepare_qat(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1)), W8, A8)
    with pytest.raises(ValueError, match="ste"):
        prepare_qat(nn.Linear(3, 3), W8, A8, ste="magic")


def test_calibrate_needs_batches():
    q = prepare_qat(nn.Sequential(nn.Linear(3, 3)), W8, A8)
    with pytest.raises(ValueError, match="no batches"):
        calibrate(q, [])


def test_fake_quant_observer_rules():
    fq = FakeQuant(QuantSpec(bits=8, symmetric=False), role="act")
    fq(torch.tensor([0.0, 1.0]))
    fq(torch.tensor([0.0, 3.0]))
    assert float(fq.hi) == 3.0  # running max
    fq.observe = False
    fq(torch.tensor([0.0, 10.0]))
    assert float(fq.hi) == 3.0
    ema = FakeQuant(QuantSpec(bits=8, symmetric=False, estimator="ema", ema_decay=0.5), role="act")
    ema(torch.tensor([0.0, 2.0]))
    ema(torch.tensor([0.0, 4.0]))
    assert float(ema.hi) == 3.0
    w = FakeQuant(QuantSpec(bits=8), role="weight")
    w(torch.tensor([-1.0, 5.0]))
    w(torch.tensor([-1.0, 2.0]))
    assert float(w.hi) == 2.0  # weights: current tensor only
    with pytest.raises(ValueError, match="pact"):
        FakeQuant(QuantSpec(), ste="pact", role="weight")
    with pytest.raises(ValueError, match="unsigned"):
        FakeQuant(QuantSpec(), ste="pact", role="act")


def test_state_dict_round_trip_into_fresh_model():
    m = _trained_bn(Res())
    q = prepare_qat(m, W8, A8, "lsq")
    x = torch.randn(8, 1, 8, 8)
    calibrate(q, [x])
    q.eval()
    fresh = prepare_qat(m, W8, A8, "lsq")
    fresh.load_state_dict(q.state_dict())
    set_observe(fresh, False)
    fresh.eval()
    assert torch.equal(fresh(x), q(x))


def test_learned_state_survives_a_state_dict_round_trip():
    """is_initialized mirrors the buffer in Python; loading a checkpoint must refresh it."""
    spec = QuantSpec(bits=4, symmetric=False)
    src, dst = FakeQuant(spec, "lsq", "act"), FakeQuant(spec, "lsq", "act")
    src.calibrating = True
    src(torch.randn(64))
    src.calibrating = False
    src.init_learned()
    assert src.is_initialized and not dst.is_initialized
    dst.load_state_dict(src.state_dict())
    assert dst.is_initialized
    x = torch.randn(64)
    assert torch.equal(src(x), dst(x))
