"""The version-2 op kinds: each integer op against the fake-quant op it replaces, and
each fast executor path against plain integer loops."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qatlab.intmodel import IntModel, IntModelFormatError, convert, run
from qatlab.intmodel.model import ActQ, IntOp
from qatlab.intmodel.reference import adaptive_bin_sums, run_cat, run_mean, run_mul, run_op
from qatlab.nn import UnsupportedLayerError, calibrate, prepare_qat
from qatlab.quant import QuantSpec
from qatlab.quant.requant import multiply_pre_shifted_reference, pre_shift_multiplier, quantize_multiplier, requantize_float_reference


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # model weights are drawn when each test builds its model


# A minmax observer puts an average's output range at averages of codes, so its
# requantization multiplier is a ratio of small integers and exact ties are common:
# the float32 fake-quant average and the integer float64 product round them
# differently. Averaging ops may then be one code off more often than others.
AVERAGE_TIES = 0.1


def _prepare(model, shape, bits=8, ste="clipped", seed=0, batches=2):
    torch.manual_seed(seed)
    q = prepare_qat(model, QuantSpec(bits=bits, granularity="channel"), QuantSpec(bits=bits, symmetric=False), ste)
    calibrate(q, [torch.randn(32, *shape) for _ in range(batches)])
    return q.eval()


def _fq_values(q, x):
    acts = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            acts[n.name] = r
            return r

    with torch.no_grad():
        Rec(q).run(x)
    return acts


def _codes(v, o):
    return torch.round(v / o.scale + o.zero_point).to(torch.int32)


def _per_op(q, im, x):
    """Feed every integer op the fake-quant model's own input codes; return, per op,
    (integer op's codes, fake-quant codes)."""
    acts = _fq_values(q, x)
    qs = {op.output: op.out_q for op in im.ops}
    pooled = {op.inputs[0] for op in im.ops if op.name.endswith("_pool")}  # a conv with its max pool fused
    codes = {im.input_name: x}
    out = {}
    for op in im.ops:
        got = run_op(op, codes, qs, im.rounding)
        if op.name in pooled or op.output.removesuffix("_pool") not in acts:
            # The fake-quant model holds no such value: the unpooled codes of a conv
            # with a fused max pool, or one step of a multi-axis slice.
            codes[op.output] = got
            continue
        codes[op.output] = _codes(acts[op.output.removesuffix("_pool")], op.out_q)
        out[op.name] = (got, codes[op.output])
    return out


def _kinds(im):
    return [op.kind for op in im.ops]


def _fixed_form(m, bound, widen):
    """(fixed multiplier, shift, pre-shift): the converter's widened form, or the
    unwidened one of a file without ``pre_shift`` (pre-shift 0)."""
    if widen:
        fm, sh, pre = pre_shift_multiplier(m, bound)
        return fm, sh, pre
    fm, sh = quantize_multiplier(m)
    return fm, sh, 0


# ---- models, one op family each ------------------------------------------------------


class ClampNet(nn.Module):
    """ReLU6 / Hardtanh / clamp fused into conv, linear and add, and standalone."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 1)
        self.act = nn.ReLU6() if spelling == "module" else nn.Hardtanh(-0.5, 0.75)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def clamp(self, x):
        if self.spelling == "module":
            return self.act(x)
        if self.spelling == "function":
            return F.relu6(x)
        if self.spelling == "method":
            return x.clamp(-1.0, 1.5)
        if self.spelling == "hardtanh":
            return F.hardtanh(x, -0.5, 0.75)
        return torch.clamp(x, min=0.25)

    def forward(self, x):
        y = self.clamp(self.bn(self.c1(x)))  # fused into the conv
        z = self.c2(y)
        y = self.clamp(z + y)  # fused into the add
        y = torch.flatten(F.adaptive_avg_pool2d(y, 4), 1)
        return self.clamp(self.fc(y)).clamp(max=2.0)  # fused into the linear, then standalone


@pytest.mark.parametrize("spelling", ["module", "function", "method", "hardtanh", "one_sided"])
def test_clamps_fuse_and_convert_exactly(spelling):
    q = _prepare(ClampNet(spelling), (3, 8, 8))
    im = convert(q, (3, 8, 8))
    kinds = _kinds(im)
    assert kinds.count("clamp") == 1, kinds  # only the clamp after a fused clamp stays standalone
    fused = [op for op in im.ops if "clamp" in op.attrs]
    assert [op.kind for op in fused] == ["conv", "add", "linear"]
    for op in fused:
        lo, hi = op.attrs["clamp"]
        assert op.out_q.qmin <= lo <= hi <= op.out_q.qmax
    for name, (got, want) in _per_op(q, im, torch.randn(64, 3, 8, 8) * 2).items():
        kind = next(o.kind for o in im.ops if o.name == name)
        d = (got - want).abs()
        # Float accumulation order can move an exact tie in the compute layers.
        assert int(d.max()) <= 1 and float((d > 0).float().mean()) < (AVERAGE_TIES if kind == "avgpool" else 0.02), name
        if kind == "clamp":
            assert int(d.max()) == 0, name


def test_fused_relu6_bounds_are_the_output_codes_of_0_and_6():
    q = _prepare(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU6()), (2, 6, 6))
    im = convert(q, (2, 6, 6))
    conv = im.ops[1]
    o = conv.out_q
    assert conv.attrs["clamp"] == (o.zero_point, min(o.qmax, o.zero_point + round(6 / o.scale)))
    assert o.qmin == 0  # post-ReLU6 values take the unsigned range


def test_standalone_clamp_clamps_at_grid_points():
    """A clamp after a max pool (no producer to fuse into) clamps at s·(lo − z)."""
    q = _prepare(nn.Sequential(nn.Conv2d(2, 4, 3), nn.MaxPool2d(2, 1), nn.Hardtanh(-0.3, 0.3)), (2, 6, 6))
    im = convert(q, (2, 6, 6))
    assert _kinds(im) == ["quantize", "conv", "maxpool", "clamp"]
    x = torch.randn(50, 2, 6, 6)
    with torch.no_grad():
        y = q(x)
    o = im.output_q
    k = y / o.scale + o.zero_point
    assert torch.allclose(k, torch.round(k), atol=1e-3)  # still on the input grid
    assert torch.equal(run(im, x), _codes(y, o))


class LutNet(nn.Module):
    def __init__(self, fn: str) -> None:
        super().__init__()
        self.fn = fn
        self.c = nn.Conv2d(2, 4, 3, padding=1)
        self.gelu = nn.GELU(approximate="tanh")

    def forward(self, x):
        y = self.c(x)
        return {
            "hardswish": lambda: F.hardswish(y),
            "hardsigmoid": lambda: nn.functional.hardsigmoid(y),
            "silu": lambda: F.silu(y),
            "sigmoid": lambda: y.sigmoid(),
            "tanh": lambda: torch.tanh(y),
            "gelu": lambda: F.gelu(y),
            "gelu_tanh": lambda: self.gelu(y),
        }[self.fn]()


@settings(max_examples=12, deadline=None)
@given(
    fn=st.sampled_from(["hardswish", "hardsigmoid", "silu", "sigmoid", "tanh", "gelu", "gelu_tanh"]),
    bits=st.sampled_from([2, 4, 8]),
    ste=st.sampled_from(["clipped", "lsq", "pact"]),
    seed=st.integers(0, 1000),
)
def test_lut_is_bit_exact_with_the_fake_quant_model(fn, bits, ste, seed):
    q = _prepare(LutNet(fn), (2, 6, 6), bits, ste, seed, batches=1)
    im = convert(q, (2, 6, 6))
    lut = im.ops[-1]
    assert lut.kind == "lut" and lut.attrs["fn"] == fn.split("_")[0]
    assert lut.tensors["table"].shape == (im.ops[-2].out_q.qmax - im.ops[-2].out_q.qmin + 1,)
    x = torch.randn(40, 2, 6, 6, generator=torch.Generator().manual_seed(seed)) * 2
    # Fed the fake-quant model's input codes (the conv before it may move a tie).
    got, want = _per_op(q, im, x)[lut.name]
    assert torch.equal(got, want)


def test_lut_table_is_the_function_on_every_code():
    """The table against a per-code evaluation in float64 arithmetic: equal wherever
    the float32 result is not within an ulp of a rounding tie."""
    q = _prepare(LutNet("silu"), (2, 6, 6))
    im = convert(q, (2, 6, 6))
    xq, lut = im.ops[-2].out_q, im.ops[-1]
    yq = lut.out_q
    for i, c in enumerate(range(xq.qmin, xq.qmax + 1)):
        x = (c - xq.zero_point) * xq.scale
        t = x / (1 + math.exp(-x)) / yq.scale
        if abs(t - math.floor(t) - 0.5) > 1e-4:
            assert int(lut.tensors["table"][i]) == min(max(round(t) + yq.zero_point, yq.qmin), yq.qmax), c


def test_lut_refuses_wide_inputs():
    q = _prepare(LutNet("sigmoid"), (2, 6, 6), bits=10)
    with pytest.raises(UnsupportedLayerError, match="at most 8 bits"):
        convert(q, (2, 6, 6))


class SENet(nn.Module):
    """Squeeze-excitation gating: [N, C, 1, 1] × [N, C, H, W], in three spellings."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)

    def forward(self, x):
        y = F.relu(self.c(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        if self.spelling == "operator":
            return y * s
        if self.spelling == "function":
            return torch.mul(s, y)
        return y.mul(s)


@pytest.mark.parametrize("spelling", ["operator", "function", "method"])
@pytest.mark.parametrize("rounding", ["float", "fixed"])
def test_mul_matches_fake_quant(spelling, rounding):
    q = _prepare(SENet(spelling), (3, 8, 8))
    im = convert(q, (3, 8, 8), rounding)
    assert _kinds(im)[-1] == "mul" and "mean" in _kinds(im)
    res = _per_op(q, im, torch.randn(64, 3, 8, 8))
    for op in im.ops:
        got, want = res[op.name]
        d = (got - want).abs()
        assert int(d.max()) <= 1, op.name
        bound = AVERAGE_TIES if op.kind == "mean" else 0.02
        # Fixed point widens the product and the sum first (pre_shift): it rounds once,
        # as the float path does, so both modes meet the same bound.
        assert float((d > 0).float().mean()) < bound, op.name


@given(
    za=st.integers(0, 255),
    zb=st.integers(0, 255),
    zo=st.integers(0, 255),
    m=st.floats(1e-5, 0.5),
    rounding=st.sampled_from(["float", "fixed"]),
    widen=st.booleans(),
    seed=st.integers(0, 10**6),
)
def test_run_mul_equals_python_integers(za, zb, zo, m, rounding, widen, seed):
    """``widen``: the converter's form (the product widened by 2^pre_shift before the
    fixed-point multiply); else a file's without ``pre_shift`` (no widening)."""
    g = torch.Generator().manual_seed(seed)
    qa = torch.randint(0, 256, (2, 3, 1, 1), generator=g, dtype=torch.int32)
    qb = torch.randint(0, 256, (2, 3, 4, 4), generator=g, dtype=torch.int32)
    fm, sh, pre = _fixed_form(m, 255 * 255, widen)
    op = IntOp(
        "mul",
        "m",
        ["a", "b"],
        "y",
        ActQ(0.1, zo, 0, 255),
        {"relu": False},
        {
            "multiplier": torch.tensor([m], dtype=torch.float64),
            "fixed_multiplier": torch.from_numpy(fm).reshape(1),
            "shift": torch.from_numpy(sh).reshape(1),
            **({"pre_shift": torch.tensor([pre], dtype=torch.int32)} if widen else {}),
        },
    )
    got = run_mul(qa, qb, op, ActQ(0.1, za, 0, 255), ActQ(0.1, zb, 0, 255), rounding)
    a, b = qa.expand_as(qb).reshape(-1).tolist(), qb.reshape(-1).tolist()
    for i, (x, y) in enumerate(zip(a, b)):
        p = (x - za) * (y - zb)
        if rounding == "float":
            want = requantize_float_reference(p, m, zo, 0, 255)
        else:
            want = min(max(multiply_pre_shifted_reference(p, int(fm), int(sh), pre) + zo, 0), 255)
        assert int(got.reshape(-1)[i]) == want


class CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 1)
        self.c = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        a, b = F.relu(self.a(x)), self.b(x)
        y = torch.cat([a, b, x], dim=1)  # three producers, three scales
        return torch.cat((self.c(y), y), -3)


@pytest.mark.parametrize("ste", ["clipped", "lsq"])
def test_cat_requantizes_each_input(ste):
    q = _prepare(CatNet(), (3, 8, 8), ste=ste)
    im = convert(q, (3, 8, 8))
    cats = [op for op in im.ops if op.kind == "cat"]
    assert [len(op.inputs) for op in cats] == [3, 2] and all(op.attrs["axis"] == 1 for op in cats)
    assert set(cats[0].tensors) >= {f"{k}_{i}" for k in ("multiplier", "fixed_multiplier", "shift") for i in range(3)}
    for op in cats:
        got, want = _per_op(q, im, torch.randn(64, 3, 8, 8))[op.name]
        d = (got - want).abs()
        assert int(d.max()) <= 1 and float((d > 0).float().mean()) < 0.01


@given(
    zs=st.lists(st.integers(0, 255), min_size=1, max_size=4),
    ms=st.lists(st.floats(0.05, 4.0), min_size=4, max_size=4),
    zo=st.integers(0, 255),
    rounding=st.sampled_from(["float", "fixed"]),
    widen=st.booleans(),
    seed=st.integers(0, 10**6),
)
def test_run_cat_equals_python_integers(zs, ms, zo, rounding, widen, seed):
    g = torch.Generator().manual_seed(seed)
    qs = [torch.randint(0, 256, (2, 1 + i, 3, 3), generator=g, dtype=torch.int32) for i in range(len(zs))]
    tensors = {}
    for i, (m, z) in enumerate(zip(ms, zs)):
        fm, sh, pre = _fixed_form(m, max(z, 255 - z), widen)
        tensors.update(
            {
                f"multiplier_{i}": torch.tensor([m], dtype=torch.float64),
                f"fixed_multiplier_{i}": torch.from_numpy(fm).reshape(1),
                f"shift_{i}": torch.from_numpy(sh).reshape(1),
                **({f"pre_shift_{i}": torch.tensor([pre], dtype=torch.int32)} if widen else {}),
            }
        )
    out = ActQ(0.1, zo, 0, 255)
    op = IntOp("cat", "c", [str(i) for i in range(len(zs))], "y", out, {"axis": 1}, tensors)
    got = run_cat(qs, op, [ActQ(0.1 * (i + 2), z, 0, 255) for i, z in enumerate(zs)], rounding)
    want = []
    for i, (q, z) in enumerate(zip(qs, zs)):
        m = ms[i]
        fm, sh, pre = _fixed_form(m, max(z, 255 - z), widen)
        f = (
            (lambda v: requantize_float_reference(v - z, m, zo, 0, 255))
            if rounding == "float"
            else (lambda v: min(max(multiply_pre_shifted_reference(v - z, int(fm), int(sh), pre) + zo, 0), 255))
        )
        want.append(torch.tensor([f(int(v)) for v in q.reshape(-1)]).reshape(q.shape))
    assert torch.equal(got, torch.cat(want, 1).to(torch.int32))


class MeanNet(nn.Module):
    def __init__(self, dims, keepdim: bool, method: bool) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3)
        self.dims, self.keepdim, self.method = dims, keepdim, method

    def forward(self, x):
        y = self.c(x)
        return y.mean(self.dims, self.keepdim) if self.method else torch.mean(y, self.dims, keepdim=self.keepdim)


@pytest.mark.parametrize("dims, keepdim, method", [((2, 3), True, True), ((-1, -2), False, False), (1, False, True), (3, True, False)])
@pytest.mark.parametrize("rounding", ["float", "fixed"])
def test_mean_matches_fake_quant(dims, keepdim, method, rounding):
    q = _prepare(MeanNet(dims, keepdim, method), (2, 7, 9))
    im = convert(q, (2, 7, 9), rounding)
    mean = im.ops[-1]
    assert mean.kind == "mean" and 0 not in mean.attrs["dims"]
    got, want = _per_op(q, im, torch.randn(64, 2, 7, 9))[mean.name]
    assert got.shape == want.shape
    d = (got - want).abs()
    assert int(d.max()) <= 1 and float((d > 0).float().mean()) < AVERAGE_TIES


@given(
    dims=st.sampled_from([(1,), (2,), (3,), (2, 3), (1, 2, 3)]), keepdim=st.booleans(), z=st.integers(0, 255), seed=st.integers(0, 10**6)
)
def test_run_mean_equals_python_integers(dims, keepdim, z, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 256, (2, 3, 4, 5), generator=g, dtype=torch.int32)
    count = math.prod(q.shape[d] for d in dims)
    m = 0.1 / (count * 0.07)
    op = IntOp(
        "mean",
        "m",
        ["x"],
        "y",
        ActQ(0.07, 3, -128, 127),
        {"dims": dims, "keepdim": keepdim, "count": count},
        {"multiplier": torch.tensor([m], dtype=torch.float64)},
    )
    got = run_mean(q, op, ActQ(0.1, z, 0, 255), "float")
    sums = (q.numpy().astype(np.int64) - z).sum(axis=dims, keepdims=keepdim)
    want = np.vectorize(lambda s: requantize_float_reference(int(s), m, 3, -128, 127))(sums)
    assert np.array_equal(got.numpy(), want)


@given(h=st.integers(1, 12), w=st.integers(1, 12), oh=st.integers(1, 8), ow=st.integers(1, 8), seed=st.integers(0, 10**6))
def test_adaptive_bin_sums_equal_loops(h, w, oh, ow, seed):
    d = torch.randint(-255, 256, (2, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)
    got = adaptive_bin_sums(d, (oh, ow))
    want = torch.zeros(2, 3, oh, ow, dtype=torch.int64)
    for i in range(oh):
        r0, r1 = (i * h) // oh, math.ceil((i + 1) * h / oh)
        for j in range(ow):
            c0, c1 = (j * w) // ow, math.ceil((j + 1) * w / ow)
            want[:, :, i, j] = d[:, :, r0:r1, c0:c1].sum((2, 3))
    assert torch.equal(got, want)
    # The bins are PyTorch's: its float average times each bin's size gives the same sums.
    sizes = torch.tensor(
        [
            [(math.ceil((i + 1) * h / oh) - (i * h) // oh) * (math.ceil((j + 1) * w / ow) - (j * w) // ow) for j in range(ow)]
            for i in range(oh)
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(F.adaptive_avg_pool2d(d.double(), (oh, ow)) * sizes, got.double(), atol=1e-6)


class PoolNet(nn.Module):
    def __init__(self, out, functional: bool) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.out, self.functional = out, functional
        self.pool = nn.AdaptiveAvgPool2d(out)

    def forward(self, x):
        y = F.relu(self.c(x))
        return F.adaptive_avg_pool2d(y, self.out) if self.functional else self.pool(y)


@pytest.mark.parametrize("hw, out", [((5, 5), (7, 7)), ((10, 10), (6, 6)), ((9, 7), (4, 3)), ((8, 8), (4, 4)), ((6, 5), (None, 2))])
@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("rounding", ["float", "fixed"])
def test_adaptive_avgpool_any_size(hw, out, functional, rounding):
    shape = (3, *hw)
    q = _prepare(PoolNet(out, functional), shape)
    im = convert(q, shape, rounding)
    pool = im.ops[-1]
    assert pool.kind == "avgpool"
    even = all(o is None or n % o == 0 for n, o in zip(hw, out))
    assert bool(pool.attrs.get("adaptive")) is not even
    got, want = _per_op(q, im, torch.randn(64, *shape))[pool.name]
    d = (got - want).abs()
    assert int(d.max()) <= 1 and float((d > 0).float().mean()) < AVERAGE_TIES


class ShuffleNet(nn.Module):
    """Channel shuffle: chunk, cat, view/transpose/view, permute, split and reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 8, 3, padding=1)
        self.d = nn.Dropout(0.5)

    def forward(self, x):
        y = self.d(self.c(x))
        a, b = y.chunk(2, dim=1)
        y = torch.cat((b, a), dim=1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w)
        y = torch.transpose(y, 1, 2).contiguous().view(n, -1, h, w)
        p, r = torch.split(y.permute(0, 2, 3, 1), [3, 5], dim=-1)
        return torch.cat([r.reshape(n, -1), p.flatten(1)], 1)


def test_pass_through_ops_are_exact():
    q = _prepare(ShuffleNet(), (2, 4, 4))
    im = convert(q, (2, 4, 4))
    kinds = _kinds(im)
    for k in ("slice", "permute", "reshape", "cat", "flatten"):
        assert k in kinds, k
    for op in im.ops:
        if op.kind == "slice":
            assert op.attrs["axis"] in (1, 3)
        if op.kind == "permute":
            assert op.attrs["dims"][0] == 0
    x = torch.randn(30, 2, 4, 4)
    for name, (got, want) in _per_op(q, im, x).items():
        kind = next(o.kind for o in im.ops if o.name == name)
        assert got.shape == want.shape, name
        if kind in ("slice", "permute", "reshape", "flatten"):
            assert torch.equal(got, want), name


def test_range_indexing_is_a_slice():
    class Ghost(nn.Module):
        """GhostNet-style: concatenate two halves, keep the first channels, crop a border."""

        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(2, 3, 1)
            self.b = nn.Conv2d(3, 3, 3, padding=1, groups=3)

        def forward(self, x):
            y = self.a(x)
            y = torch.cat([y, self.b(y)], 1)[:, :5]
            return y[:, :, 1:-1, -4:]

    q = _prepare(Ghost(), (2, 6, 6))
    im = convert(q, (2, 6, 6))
    slices = [op.attrs for op in im.ops if op.kind == "slice"]
    assert [(a["axis"], a["start"], a["end"]) for a in slices] == [(1, 0, 5), (2, 1, 5), (3, 2, 6)]
    assert [tuple(a["out_shape"]) for a in slices] == [(5, 6, 6), (5, 4, 6), (5, 4, 4)]
    x = torch.randn(20, 2, 6, 6)
    for name, (got, want) in _per_op(q, im, x).items():
        if name.startswith("getitem"):
            assert torch.equal(got, want), name


def test_grouped_and_depthwise_convs():
    m = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    q = _prepare(m, (4, 6, 6))
    im = convert(q, (4, 6, 6))
    assert [op.attrs.get("groups") for op in im.ops[1:]] == [2, 8]
    for name, (got, want) in _per_op(q, im, torch.randn(40, 4, 6, 6)).items():
        assert int((got - want).abs().max()) == 0, name


def test_unsupported_ops_name_the_node_and_type():
    class Exp(nn.Module):
        def forward(self, x):
            return torch.exp(x)

    class Scale(nn.Module):
        def forward(self, x):
            return x * 2.0

    class Index(nn.Module):
        def forward(self, x):
            return x[:, 1:, ::2]

    with pytest.raises(UnsupportedLayerError, match="exp"):
        prepare_qat(Exp(), QuantSpec(), QuantSpec(symmetric=False))
    with pytest.raises(UnsupportedLayerError, match="mul"):
        prepare_qat(Scale(), QuantSpec(), QuantSpec(symmetric=False))
    with pytest.raises(UnsupportedLayerError, match="Softplus"):
        prepare_qat(nn.Sequential(nn.Linear(2, 2), nn.Softplus()), QuantSpec(), QuantSpec(symmetric=False))
    q = _prepare(Index(), (3, 4))
    with pytest.raises(UnsupportedLayerError, match="getitem.*only contiguous ranges"):
        convert(q, (3, 4))


def test_version_2_round_trip_and_version_1_still_loads(tmp_path):
    cases = [
        (SENet("operator"), (3, 8, 8)),  # mean, lut, mul
        (ClampNet("method"), (3, 8, 8)),  # fused and standalone clamps
        (PoolNet((7, 7), True), (3, 5, 5)),  # adaptive bins
        (ShuffleNet(), (2, 4, 4)),  # slice, permute, reshape, cat
    ]
    for i, (model, shape) in enumerate(cases):
        im = convert(_prepare(model, shape), shape)
        p = tmp_path / f"m{i}.pt"
        im.save(p)
        back = IntModel.load(p)
        x = torch.randn(10, *shape)
        assert torch.equal(run(back, x), run(im, x))
        assert [op.attrs for op in back.ops] == [op.attrs for op in IntModel.from_dict(im.to_dict()).ops]
        assert torch.load(p, weights_only=True)["version"] == 2
    v1 = _prepare(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), (3, 8, 8))
    d = convert(v1, (3, 8, 8)).to_dict()
    d["version"] = 1
    x = torch.randn(10, 3, 8, 8)
    assert torch.equal(run(IntModel.from_dict(d), x), run(convert(v1, (3, 8, 8)), x))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda op: op.attrs.update(fn="softplus"), "unknown fn"),
        (lambda op: op.tensors.pop("table"), "lacks tensor 'table'"),
        (lambda op: op.inputs.append(op.inputs[0]), "reads 2 inputs"),
    ],
)
def test_validate_knows_the_new_kinds(mutate, match):
    q = _prepare(LutNet("tanh"), (2, 6, 6))
    im = convert(q, (2, 6, 6))
    mutate(im.ops[-1])
    with pytest.raises(IntModelFormatError, match=match):
        im.validate()


def test_validate_rejects_bad_permute_slice_and_cat():
    xq = ActQ(0.1, 0, 0, 255)
    q0 = IntOp("quantize", "x", ["in"], "x", xq)
    for op, match in [
        (IntOp("permute", "p", ["x"], "p", xq, {"dims": (1, 0, 2)}), "keeps the batch"),
        (IntOp("slice", "s", ["x"], "s", xq, {"axis": 0, "start": 0, "end": 1}), "batch axis"),
        (IntOp("cat", "c", ["x", "x"], "c", xq, {"axis": 1}, {"multiplier_0": torch.ones(1)}), "lacks tensor"),
        (IntOp("clamp", "k", ["x"], "k", xq, {"lo": 5, "hi": 2}), "lo > hi"),
    ]:
        with pytest.raises(IntModelFormatError, match=match):
            IntModel([q0, op], "in", op.output, (3,)).validate()
