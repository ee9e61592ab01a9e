import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from qatlab.intmodel import IntModel, IntModelFormatError, convert, dequantize_output, predict, run
from qatlab.intmodel.model import ActQ, IntOp
from qatlab.intmodel.reference import _matmul_layer, run_conv, run_op
from qatlab.nn import UnsupportedLayerError, calibrate, prepare_qat
from qatlab.quant import QuantSpec


class Net(nn.Module):
    """Every op kind the integer model supports."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.c = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.mp = nn.MaxPool2d(2)
        self.proj = nn.Conv2d(6, 8, 1, stride=2, bias=True)
        self.ap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.bn(self.c(x)) + x)
        x = self.proj(self.mp(x))
        return self.fc(torch.flatten(self.ap(torch.relu(x)), 1))


def _qat(bits=8, ste="clipped", gran="channel", seed=0):
    torch.manual_seed(seed)
    m = Net()
    m.train()
    for _ in range(3):
        m(torch.randn(32, 1, 12, 12))
    m.eval()
    q = prepare_qat(m, QuantSpec(bits=bits, granularity=gran), QuantSpec(bits=bits, symmetric=False), ste)
    calibrate(q, [torch.randn(32, 1, 12, 12) for _ in range(2)])
    q.eval()
    return q


def _fq_codes(q, im, x):
    """Every value of the fake-quant model, as codes on the IntModel's grids."""
    acts = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            acts[n.name] = r
            return r

    with torch.no_grad():
        Rec(q).run(x)
    codes = {im.input_name: x}
    for op in im.ops:
        o = op.out_q
        codes[op.output] = torch.round(acts[op.output] / o.scale + o.zero_point).to(torch.int32)
    return codes


@pytest.mark.parametrize("bits, ste", [(8, "clipped"), (4, "lsq"), (4, "pact"), (2, "lsq")])
@pytest.mark.parametrize("rounding", ["float", "fixed"])
def test_each_int_op_matches_the_fake_quant_op(bits, ste, rounding):
    """Fed the fake-quant model's own inputs, each integer op lands on the same code
    (the eval-mode fake-quant bias sits on the same s_x·s_w grid), or one step away
    where float accumulation order moves an exact tie (average pooling's sum/count).
    gemmlowp's fixed point rounds twice (high multiply, then the shift): with small
    right shifts (M near 1, as at 2 bits) that moves many ties, so it gets a looser
    bound; its bit-exactness is tested against plain integers in tests/quant."""
    q = _qat(bits, ste)
    im = convert(q, (1, 12, 12), rounding)
    codes = _fq_codes(q, im, torch.randn(100, 1, 12, 12))
    qs = {op.output: op.out_q for op in im.ops}
    for op in im.ops:
        got = run_op(op, codes, qs, rounding)
        d = (got - codes[op.output]).abs()
        assert int(d.max()) <= 1, op.name
        assert float((d > 0).float().mean()) < (0.02 if rounding == "float" else 0.45), op.name


def test_int_model_predictions_track_fake_quant():
    q = _qat(8)
    im = convert(q, (1, 12, 12))
    x = torch.randn(300, 1, 12, 12)
    with torch.no_grad():
        fq = q(x)
    assert float((predict(im, x) == fq.argmax(1)).float().mean()) >= 0.9
    assert float(((dequantize_output(im, run(im, x)) - fq).abs() / im.output_q.scale).max()) <= 3.01


def _naive_conv(q, w, z, stride, pad):
    """Plain loops: Σ w·(x − z) with real zero padding (code z)."""
    b, c, h, wd = q.shape
    o, _, kh, kw = w.shape
    x = np.full((b, c, h + 2 * pad, wd + 2 * pad), z, dtype=np.int64)
    x[:, :, pad : pad + h, pad : pad + wd] = q.numpy()
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((b, o, oh, ow), dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw] - z
            out[:, :, i, j] = np.einsum("bckl,ockl->bo", patch, w.numpy().astype(np.int64))
    return out


@given(
    c=st.integers(1, 3),
    o=st.integers(1, 4),
    h=st.integers(3, 7),
    k=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
    z=st.integers(0, 255),
    seed=st.integers(0, 10**6),
)
def test_conv_accumulator_equals_naive_loops(c, o, h, k, stride, pad, z, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 256, (2, c, h, h), generator=g, dtype=torch.int32)
    w = torch.randint(-128, 128, (o, c, k, k), generator=g, dtype=torch.int8)
    oh = (h + 2 * pad - k) // stride + 1
    # Multiplier 1, zero point 0, wide clamp: the op returns the raw accumulator.
    op = IntOp(
        "conv",
        "c",
        ["x"],
        "y",
        ActQ(1.0, 0, -(2**31), 2**31 - 1),
        {"groups": 1, "padding": (pad, pad), "stride": (stride, stride), "dilation": (1, 1), "out_shape": (o, oh, oh), "relu": False},
        {"weight": w, "bias": torch.zeros(o, dtype=torch.int32), "multiplier": torch.ones(o, dtype=torch.float64)},
    )
    got = run_conv(q, op, ActQ(0.1, z, 0, 255), "float")
    assert np.array_equal(got.numpy(), _naive_conv(q, w, z, stride, pad))


@given(m=st.integers(1, 20), k=st.integers(1, 40), n=st.integers(1, 9), signed=st.booleans(), seed=st.integers(0, 10**6))
def test_int8_offset_trick_is_exact(m, k, n, signed, seed):
    g = torch.Generator().manual_seed(seed)
    xq = ActQ(0.1, 3, -128, 127) if signed else ActQ(0.1, 17, 0, 255)
    a = torch.randint(xq.qmin, xq.qmax + 1, (m, k), generator=g, dtype=torch.int32)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    ref = (a.long() - xq.zero_point) @ w.long().t()
    assert torch.equal(_matmul_layer(a, xq, w), ref)


def test_save_load_round_trip(tmp_path):
    im = convert(_qat(4, "lsq"), (1, 12, 12))
    p = tmp_path / "m.pt"
    im.save(p)
    back = IntModel.load(p)
    x = torch.randn(20, 1, 12, 12)
    assert torch.equal(run(back, x), run(im, x))
    assert [o.kind for o in back.ops] == [o.kind for o in im.ops]
    assert not any(f.name.endswith(".tmp") for f in tmp_path.iterdir())
    torch.load(p, weights_only=True)  # plain tensors and containers only


def test_bad_files_are_clear_errors(tmp_path):
    im = convert(_qat(), (1, 12, 12))
    good = tmp_path / "m.pt"
    im.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(IntModelFormatError, match="corrupted, truncated or foreign"):
        IntModel.load(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    with pytest.raises(IntModelFormatError):
        IntModel.load(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(IntModelFormatError, match="not a qatlab IntModel"):
        IntModel.load(tmp_path / "foreign.pt")
    d = im.to_dict()
    d["version"] = 99
    with pytest.raises(IntModelFormatError, match="version"):
        IntModel.from_dict(d)


def test_unsupported_weight_granularity_is_named():
    q = _qat(gran="element")
    with pytest.raises(UnsupportedLayerError, match="granularity .element."):
        convert(q, (1, 12, 12))


def test_wrong_input_shape():
    im = convert(_qat(), (1, 12, 12))
    with pytest.raises(ValueError, match="expected inputs of shape"):
        run(im, torch.randn(2, 1, 10, 10))


class PoolNet(nn.Module):
    """conv → BN → ReLU → max pool, and a conv → max pool without BN/ReLU (padded, odd sizes)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.b = nn.Sequential(nn.Conv2d(4, 6, 3, bias=True), nn.MaxPool2d(3, stride=2, padding=1))
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.b(self.a(x)), 1))


def _pool_qat(ste):
    torch.manual_seed(0)
    m = PoolNet()
    m.train()
    m(torch.randn(32, 1, 13, 13))
    m.eval()
    q = prepare_qat(m, QuantSpec(bits=4, granularity="channel"), QuantSpec(bits=4, symmetric=False), ste)
    calibrate(q, [torch.randn(32, 1, 13, 13)])
    return q.eval()


@pytest.mark.parametrize("ste", ["clipped", "lsq"])
def test_max_pool_fused_into_conv_is_the_same_function(ste):
    """prepare_qat moves a max pool that follows a conv in front of the conv's output
    quantizer: the values are those of quantize-then-pool."""
    from qatlab.nn import QuantConv2d

    q = _pool_qat(ste)
    convs = [mod for mod in q.modules() if isinstance(mod, QuantConv2d)]
    assert [c.maxpool is not None for c in convs] == [True, True]
    assert sum(isinstance(mod, nn.MaxPool2d) for mod in q.modules()) == 2  # only the fused ones
    x = torch.randn(200, 1, 13, 13)
    with torch.no_grad():
        fused = q(x)
        for c in convs:  # the unfused order: quantize the conv output, then pool it
            pool, c.maxpool = c.maxpool, None
            c.register_forward_hook(lambda mod, inp, out, pool=pool: pool(out))
        unfused = q(x)
    assert torch.equal(fused, unfused)


def test_fused_max_pool_converts_to_conv_then_maxpool():
    q = _pool_qat("lsq")
    im = convert(q, (1, 13, 13))
    assert [op.kind for op in im.ops] == ["quantize", "conv", "maxpool", "conv", "maxpool", "flatten", "linear"]
    shapes = [tuple(op.attrs["out_shape"]) for op in im.ops[1:5]]
    assert shapes == [(4, 13, 13), (4, 6, 6), (6, 4, 4), (6, 2, 2)]
    x = torch.randn(300, 1, 13, 13)
    with torch.no_grad():
        fq = q(x)
    # As for every model here: a rare exact tie rounds the other way in float32 vs int.
    assert float((predict(im, x) == fq.argmax(1)).float().mean()) >= 0.99
    assert float(((dequantize_output(im, run(im, x)) - fq).abs() / im.output_q.scale).max()) <= 1.01


def test_max_pool_fused_into_conv_keeps_lsq_gradients():
    """Only window maxima receive gradient either way, and LSQ's gradient scale keeps
    counting the unpooled values: at 16 bits (no quantization ties inside a window)
    the fused and unfused layers give the same gradients."""
    from qatlab.nn import QuantConv2d

    torch.manual_seed(0)
    spec_w, spec_a = QuantSpec(bits=16, granularity="channel"), QuantSpec(bits=16, symmetric=False)
    conv, bn, pool = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.MaxPool2d(2)
    fused = QuantConv2d(conv, bn, True, spec_w, spec_a, "lsq", "lsq", pool)
    plain = QuantConv2d(copy.deepcopy(conv), copy.deepcopy(bn), True, spec_w, spec_a, "lsq", "lsq")
    x = torch.randn(8, 3, 10, 10)
    for m in (fused, plain):
        for fq in (m.weight_fq, m.act_fq):
            fq.calibrating = True
        m.eval()
        m(x)
        for fq in (m.weight_fq, m.act_fq):
            fq.calibrating = False
            fq.init_learned()
        m.train()
    plain.act_fq.scale.data.copy_(fused.act_fq.scale.data)  # ranges were observed before/after pooling
    plain.act_fq.zero_point.data.copy_(fused.act_fq.zero_point.data)
    g = torch.randn(8, 4, 5, 5)
    outs = []
    for m, post in ((fused, lambda t: t), (plain, pool)):
        y = post(m(x))
        y.backward(g)
        outs.append((y.detach(), m.act_fq.scale.grad, m.conv.weight.grad))
    assert torch.allclose(outs[0][0], outs[1][0])
    assert torch.allclose(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-7)
    assert torch.allclose(outs[0][2], outs[1][2], rtol=1e-4, atol=1e-6)
