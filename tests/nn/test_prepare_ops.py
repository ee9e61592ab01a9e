"""prepare_qat on the ops of widely used CNNs: what each spelling becomes."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qatlab.nn import (
    QuantAdd,
    QuantAvgPool,
    QuantCat,
    QuantClamp,
    QuantConv2d,
    QuantLinear,
    QuantLUT,
    QuantMean,
    QuantMul,
    UnsupportedLayerError,
    calibrate,
    prepare_qat,
)
from qatlab.quant import QuantSpec

W8 = QuantSpec(bits=8, granularity="channel")
A8 = QuantSpec(bits=8, symmetric=False)


def _mods(q, kind):
    return [m for m in q.modules() if isinstance(m, kind)]


class Spellings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 4)
        self.r6 = nn.ReLU6(inplace=True)

    def forward(self, x):
        a = self.r6(self.c1(x))
        b = F.hardtanh(self.c2(a), -1.0, 2.0)
        c = self.c3(b).clamp_(min=-0.5)
        d = torch.clamp(a + c, 0.0, 6.0)
        return torch.clip(self.fc(d.mean((2, 3))), max=3.0)


def test_every_clamp_spelling_fuses_into_its_producer():
    q = prepare_qat(Spellings(), W8, A8)
    assert not _mods(q, QuantClamp)
    clamps = [m.clamp for m in _mods(q, QuantConv2d)] + [m.clamp for m in _mods(q, QuantAdd)] + [m.clamp for m in _mods(q, QuantLinear)]
    assert clamps == [(0.0, 6.0), (-1.0, 2.0), (-0.5, None), (0.0, 6.0), (None, 3.0)]
    # Post-ReLU6 values are non-negative: a symmetric signed spec gives them the unsigned range.
    sym = prepare_qat(Spellings(), W8, QuantSpec(bits=8))
    assert sym.get_submodule("c1").act_fq.spec.qmin == 0 and sym.get_submodule("c2").act_fq.spec.qmin < 0


def test_a_clamp_with_two_readers_does_not_fuse():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            y = self.c(x)
            return F.relu6(y) + y

    q = prepare_qat(Two(), W8, A8)
    assert q.get_submodule("c").clamp is None and len(_mods(q, QuantClamp)) == 1


@pytest.mark.parametrize(
    "act, fn",
    [
        (nn.Hardswish(), "hardswish"),
        (nn.Hardsigmoid(), "hardsigmoid"),
        (nn.SiLU(), "silu"),
        (nn.Sigmoid(), "sigmoid"),
        (nn.Tanh(), "tanh"),
        (nn.GELU(), "gelu"),
        (nn.GELU(approximate="tanh"), "gelu"),
    ],
)
def test_lut_modules(act, fn):
    q = prepare_qat(nn.Sequential(nn.Linear(3, 3), act), W8, A8)
    (lut,) = _mods(q, QuantLUT)
    assert lut.fn == fn
    x = torch.randn(8, 3)
    calibrate(q, [x])
    q.eval()
    assert torch.allclose(q(x), act(q.get_submodule("0")(q.get_submodule("input_quant_1")(x))), atol=2 * float(lut.act_fq.qparams().scale))


def test_lut_functions_and_methods_and_a_shared_module():
    class Fns(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.Hardswish()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            y = self.act(self.a(x)) + self.act(self.b(x))  # one module, two call sites
            return torch.sigmoid(y) * y.tanh() + F.silu(y).sigmoid() * torch.tanh(F.gelu(y))

    q = prepare_qat(Fns(), W8, A8)
    luts = _mods(q, QuantLUT)
    assert sorted(m.fn for m in luts) == sorted(["hardswish", "hardswish", "sigmoid", "tanh", "silu", "sigmoid", "gelu", "tanh"])
    assert len({id(m) for m in luts}) == len(luts)  # each call site its own quantizer
    assert len(_mods(q, QuantMul)) == 2 and len(_mods(q, QuantAdd)) == 2


def test_a_pool_called_twice_gets_a_quantizer_per_call():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)
            self.pool = nn.AvgPool2d(2)

        def forward(self, x):
            return self.pool(self.a(x)) + self.pool(F.relu(self.b(x)))

    q = prepare_qat(Twice(), W8, A8)
    assert len(_mods(q, QuantAvgPool)) == 2
    calibrate(q, [torch.randn(8, 2, 4, 4)])
    pools = _mods(q.eval(), QuantAvgPool)
    assert pools[0]._input_fq is q.get_submodule("a").act_fq and pools[1]._input_fq is q.get_submodule("b").act_fq


def test_shape_arithmetic_is_not_a_tensor_op():
    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(2, 4, 1)

        def forward(self, x):
            y = self.c(x)
            n, c, h, w = y.size()
            y = y.view(n, 2, c // 2, h * w).transpose(1, 2).reshape(n, c + 0, h, w)
            a, b = y.chunk(2, 1)
            return torch.cat([b, a], 1)

    q = prepare_qat(Shuffle(), W8, A8)
    assert not _mods(q, QuantMul) and not _mods(q, QuantAdd) and len(_mods(q, QuantCat)) == 1
    calibrate(q, [torch.randn(4, 2, 3, 3)])


def test_functional_adaptive_pool_and_mean_become_modules():
    class Pools(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(2, 4, 3)

        def forward(self, x):
            y = self.c(x)
            return torch.cat([F.adaptive_avg_pool2d(y, (3, 2)).flatten(1), torch.mean(y, dim=(-1, -2)), y.mean(-1).mean(-1)], 1)

    q = prepare_qat(Pools(), W8, A8)
    assert len(_mods(q, QuantAvgPool)) == 1 and len(_mods(q, QuantMean)) == 3 and len(_mods(q, QuantCat)) == 1
    calibrate(q, [torch.randn(4, 2, 7, 8)])
    assert q.eval()(torch.randn(2, 2, 7, 8)).shape == (2, 6 * 4 + 4 + 4)


def test_unsupported_ops_are_named():
    class Const(nn.Module):
        def forward(self, x):
            return x * 2.0

    class AllMean(nn.Module):
        def forward(self, x):
            return x.mean()

    class Softmax(nn.Module):
        def forward(self, x):
            return F.softmax(x, 1)

    with pytest.raises(UnsupportedLayerError, match="node mul: function mul"):
        prepare_qat(Const(), W8, A8)
    with pytest.raises(UnsupportedLayerError, match="node mean: .*batch"):
        prepare_qat(AllMean(), W8, A8)
    with pytest.raises(UnsupportedLayerError, match="node softmax: function softmax"):
        prepare_qat(Softmax(), W8, A8)

    class CatOfTuple(nn.Module):
        def forward(self, x):
            return torch.cat(x.chunk(2, 1), 1)

    with pytest.raises(UnsupportedLayerError, match="node cat: torch.cat needs a list of tensors"):
        prepare_qat(CatOfTuple(), W8, A8)
    with pytest.raises(UnsupportedLayerError, match="ELU"):
        prepare_qat(nn.Sequential(nn.Linear(2, 2), nn.ELU()), W8, A8)


def test_standalone_clamp_sits_on_the_input_grid():
    q = prepare_qat(nn.Sequential(nn.Conv2d(2, 3, 3), nn.MaxPool2d(2), nn.Hardtanh(-0.37, 0.41)), W8, A8)
    (clamp,) = _mods(q, QuantClamp)
    x = torch.randn(16, 2, 9, 9)
    calibrate(q, [x])
    q.eval()
    fq = q.get_submodule("0").act_fq.qparams()
    s, z = float(fq.scale), int(fq.zero_point)
    y = q(x)
    codes = y / s + z
    assert torch.allclose(codes, torch.round(codes), atol=1e-3)
    lo, hi = clamp.grid_bounds()
    assert int(torch.round(codes).min()) >= lo and int(torch.round(codes).max()) <= hi
    assert abs((lo - z) * s - -0.37) <= s / 2 + 1e-6 and abs((hi - z) * s - 0.41) <= s / 2 + 1e-6


class Gate(nn.Module):
    def __init__(self, pool) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = pool

    def forward(self, x):
        y = F.relu(self.c(x))
        return self.pool(y) * torch.sigmoid(y.mean((2, 3), keepdim=True))


@settings(max_examples=10, deadline=None)
@given(
    out=st.sampled_from([1, 2, 3, (5, 3), (7, 7)]),
    ste=st.sampled_from(["clipped", "lsq"]),
    bits=st.sampled_from([4, 8]),
    seed=st.integers(0, 10**4),
)
def test_eval_mode_exact_averages_and_products_stay_within_a_code_of_the_float_ops(out, ste, bits, seed):
    """Eval mode computes averages and products on exact codes (the integer model's
    arithmetic); the plain float path (training mode, observers off) rounds the
    same real values and may differ only where a value sits on a rounding tie."""
    torch.manual_seed(seed)
    q = prepare_qat(Gate(nn.AdaptiveAvgPool2d(out)), W8.with_(bits=bits), A8.with_(bits=bits), ste)
    x = torch.randn(16, 3, 10, 10)
    calibrate(q, [x])
    q.eval()
    mods = _mods(q, (QuantMul, QuantMean, QuantAvgPool))
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args)) for m in mods]
    with torch.no_grad():
        q(x)
    for h in hooks:
        h.remove()
    assert len(inputs) == 3
    with torch.no_grad():
        for m, args in inputs.items():
            exact = m(*args)
            m.train()  # the plain float op, then the same output quantizer
            plain = m(*args)
            m.eval()
            s = float(m.act_fq.qparams().scale)
            d = ((exact - plain) / s).abs()
            assert float(d.max()) <= 1.001, type(m).__name__
            assert float((d > 0.5).float().mean()) < 0.2, type(m).__name__


def test_training_mode_products_and_averages_have_gradients():
    q = prepare_qat(Gate(nn.AdaptiveAvgPool2d(3)), W8, A8, "lsq")
    x = torch.randn(8, 3, 10, 10)
    calibrate(q, [x])
    q.train()
    q(x).sum().backward()
    assert q.get_submodule("c").conv.weight.grad.abs().sum() > 0
    assert all(m.act_fq.scale.grad is not None for m in _mods(q, (QuantMul, QuantMean, QuantAvgPool)))
