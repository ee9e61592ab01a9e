"""The model zoo: shapes, fx-traceability, the BN-folding contract, training signal, seeding."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from qatlab.data import load_dataset
from qatlab.models import DEFAULT_MODEL, MODELS, SqueezeExcite, build_model

SHAPES = [(1, 28, 28), (1, 8, 8)]
ALLOWED = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Linear,
    nn.Identity,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, num_classes=7, input_shape=shape).eval()
    assert model(torch.randn(3, *shape)).shape == (3, 7)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fx_traceable_and_equal(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape).eval()
    traced = fx.symbolic_trace(model)
    x = torch.randn(4, *shape)
    assert torch.equal(traced(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_only_foldable_building_blocks(name: str) -> None:
    """Leaf modules come from the allowed set, no dropout, and in the traced graph every
    BatchNorm2d reads straight from a bias-free Conv2d that feeds nothing else."""
    traced = fx.symbolic_trace(build_model(name))
    modules = dict(traced.named_modules())
    leaves = [m for m in modules.values() if not list(m.children())]
    assert all(isinstance(m, ALLOWED) for m in leaves), [type(m).__name__ for m in leaves]
    for node in traced.graph.nodes:
        if node.op != "call_module":
            continue
        mod = modules[node.target]
        if isinstance(mod, nn.BatchNorm2d):
            prev = node.args[0]
            conv = modules.get(prev.target) if prev.op == "call_module" else None
            assert isinstance(conv, nn.Conv2d), f"{node.target} does not follow a Conv2d"
            assert conv.bias is None, f"{prev.target} has a bias before BN"
            assert len(prev.users) == 1, f"{prev.target} feeds more than its BN"
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in leaves)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in leaves)
    # Every conv in the zoo has its BN, except squeeze-excitation's two 1x1 convs.
    n_se = sum(isinstance(m, SqueezeExcite) for m in build_model(name).modules())
    assert n_bn == n_conv - 2 * n_se


def test_resnet8_has_residual_adds_and_projections() -> None:
    model = build_model("resnet8")
    traced = fx.symbolic_trace(model)
    adds = [n for n in traced.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 3
    one_by_one = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(one_by_one) == 2  # stages 2 and 3 change shape
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())


@pytest.mark.parametrize(
    ("name", "shape", "low", "high"),
    [
        ("mlp", (1, 28, 28), 200_000, 300_000),
        ("lenet", (1, 28, 28), 300_000, 600_000),
        ("resnet8", (1, 28, 28), 50_000, 120_000),
        ("mlp", (1, 8, 8), 40_000, 60_000),
        ("lenet", (1, 8, 8), 40_000, 80_000),
        ("resnet8", (1, 8, 8), 50_000, 120_000),
        ("mobilenet", (1, 28, 28), 100_000, 200_000),
        ("mobilenet", (3, 32, 32), 100_000, 200_000),
    ],
)
def test_parameter_counts_sane(name: str, shape: tuple[int, int, int], low: int, high: int) -> None:
    n = sum(p.numel() for p in build_model(name, input_shape=shape).parameters())
    assert low <= n <= high, n


@pytest.mark.slow  # trains every zoo model for a few steps
@pytest.mark.parametrize("name", MODELS)
def test_a_few_sgd_steps_reduce_the_loss(name: str) -> None:
    torch.manual_seed(0)
    splits = load_dataset("digits", limit_train=128)
    x, y = splits.train.tensors
    model = build_model(name, splits.num_classes, splits.input_shape)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def loss_now() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(x), y))

    before = loss_now()
    model.train()
    for _ in range(10):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            loss_fn(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    # BN statistics of the final weights (a cumulative average over the data): the
    # running averages of 20 steps still mix in earlier weights, and a net with as
    # many BN layers as the MobileNet compounds that lag.
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for i in range(0, len(y), 64):
            model(x[i : i + 64])
    after = loss_now()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_under_seed(name: str) -> None:
    torch.manual_seed(123)
    a = build_model(name)
    torch.manual_seed(123)
    b = build_model(name)
    torch.manual_seed(124)
    c = build_model(name)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_default_model_is_lenet() -> None:
    assert DEFAULT_MODEL == "lenet" and DEFAULT_MODEL in MODELS


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="name.*'vgg'.*mlp, lenet, resnet8"):
        build_model("vgg")


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"input_shape": (28, 28)}, "input_shape"),
        ({"input_shape": (1, 0, 28)}, "input_shape"),
        ({"input_shape": (1, 2, 2)}, "input_shape"),  # too small for lenet's pools
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=arg):
        build_model("lenet", **kwargs)


# ---- the MobileNet-style model ------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 5, 7), (2, 1, 1)])
def test_mobilenet_any_input_size(shape: tuple[int, int, int]) -> None:
    """Global average pooling before the head: any H, W >= 1 gives the logits."""
    torch.manual_seed(0)
    model = build_model("mobilenet", num_classes=4, input_shape=shape).eval()
    x = torch.randn(2, *shape)
    traced = fx.symbolic_trace(model)
    assert torch.equal(traced(x), model(x)) and model(x).shape == (2, 4)


def test_mobilenet_has_its_building_blocks() -> None:
    model = build_model("mobilenet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 6 and all(c.groups == c.in_channels == c.out_channels and c.kernel_size == (3, 3) for c in depthwise)
    kinds = {type(m) for m in model.modules()}
    assert {nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, SqueezeExcite} <= kinds
    traced = fx.symbolic_trace(model)
    ops = [str(n.target) for n in traced.graph.nodes if n.op == "call_function"]
    assert sum("add" in o for o in ops) == 3  # residual adds where the shape is kept
    assert sum("mul" in o for o in ops) == 4  # one gating product per squeeze-excitation


def test_squeeze_excite_gates_each_channel() -> None:
    """Reference: x * hardsigmoid(W2 relu(W1 mean(x) + b1) + b2), written out."""
    torch.manual_seed(0)
    se = SqueezeExcite(8, 4)
    x = torch.randn(3, 8, 5, 5)
    s = x.mean((2, 3))
    h = torch.relu(s @ se.fc1.weight.reshape(4, 8).T + se.fc1.bias)
    g = torch.clamp((h @ se.fc2.weight.reshape(8, 4).T + se.fc2.bias) / 6 + 0.5, 0, 1)
    torch.testing.assert_close(se(x), x * g[:, :, None, None])


def _warm_bn(model: nn.Module, shape: tuple[int, int, int]) -> nn.Module:
    # Running statistics from data, as after training: fresh BN statistics (mean 0,
    # var 1) would leave activations far from what calibration sees.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, *shape))
    return model.eval()


@pytest.mark.parametrize(("bits", "ste", "first_last"), [(8, "lsq", None), pytest.param(4, "lsq", 8, marks=pytest.mark.slow)])
def test_mobilenet_converts_with_fake_quant_codes(bits: int, ste: str, first_last: int | None) -> None:
    """prepare_qat -> calibrate -> convert; fed the fake-quant model's own input codes,
    each integer op gives the fake-quant op's codes (at most one step apart, where float
    accumulation order moves an exact tie: rare, a bit more in averaging ops), and the
    integer model's predictions are the fake-quant model's."""
    from qatlab.intmodel import convert, predict
    from qatlab.intmodel.reference import run_op
    from qatlab.nn import calibrate, prepare_qat
    from qatlab.quant import QuantSpec

    shape = (1, 12, 12)
    torch.manual_seed(0)
    model = _warm_bn(build_model("mobilenet", 10, shape), shape)
    w_spec = QuantSpec(bits=bits, granularity="channel", estimator="mse" if bits < 8 else "minmax")
    a_spec = QuantSpec(bits=bits, symmetric=False)
    q = prepare_qat(model, w_spec, a_spec, ste, first_last_bits=first_last)
    calibrate(q, [torch.randn(32, *shape) for _ in range(2)])
    q.eval()
    im = convert(q, shape)
    kinds = [op.kind for op in im.ops]
    assert {"conv", "mul", "add", "linear"} <= set(kinds)

    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1))
    acts: dict[str, torch.Tensor] = {}

    class Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            r = super().run_node(n)
            acts[n.name] = r
            return r

    with torch.no_grad():
        Record(q).run(x)
        fq_pred = q(x).argmax(1)
    codes = {im.input_name: x}
    for op in im.ops:
        o = op.out_q
        codes[op.output] = torch.round(acts[op.output] / o.scale + o.zero_point).to(torch.int32)
    qs = {op.output: op.out_q for op in im.ops}
    for op in im.ops:
        d = (run_op(op, codes, qs, im.rounding) - codes[op.output]).abs()
        assert int(d.max()) <= 1, op.name
        assert float((d > 0).float().mean()) < (0.1 if op.kind in ("avgpool", "mean") else 0.02), op.name
    assert float((predict(im, x) == fq_pred).float().mean()) >= 0.98
