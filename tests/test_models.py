"""The model zoo: shapes, fx-traceability, the BN-folding contract, training signal, seeding."""
from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from qatlab.data import load_dataset
from qatlab.models import DEFAULT_MODEL, MODELS, build_model

SHAPES = [(1, 28, 28), (1, 8, 8)]
ALLOWED = (
    nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.Flatten, nn.Linear, nn.Identity,
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
    assert n_bn == n_conv  # every conv in the zoo has its BN


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
    ],
)
def test_parameter_counts_sane(name: str, shape: tuple[int, int, int], low: int, high: int) -> None:
    n = sum(p.numel() for p in build_model(name, input_shape=shape).parameters())
    assert low <= n <= high, n


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
