"""Sensitivity methods: registry, table shape, and the cache."""

from __future__ import annotations

import json

import pytest

from qatlab.mixed import MixedPrecisionError, SensitivityInput, layer_sensitivity, methods, register
from qatlab.mixed.sens_cache import cache_key, cache_path
from qatlab.mixed.space import act_choices, layer_choices

from .conftest import A, W, data

CALLS: list[int] = []


@register("_counting")
def _counting(inp: SensitivityInput) -> dict:
    CALLS.append(1)
    table = {s.name: {c: float(c[0] * c[1]) ** -1 for c in layer_choices(inp.space, s)} for s in inp.space.layers}
    return table | {a.key: {c: 1.0 / c[1] for c in act_choices(inp.space, a)} for a in inp.space.acts}


def test_cache_hit(lenet_setup, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path))
    m, q, space, _ = lenet_setup
    inp = SensitivityInput(m, q, space, W, A, "lsq", data())
    CALLS.clear()
    first = layer_sensitivity("_counting", inp)
    second = layer_sensitivity("_counting", inp)
    assert CALLS == [1] and first == second
    path = cache_path(cache_key("_counting", inp, {}))
    assert path.parent == tmp_path / "mixed" and json.loads(path.read_text())["method"] == "_counting"
    # other weights, other data: a miss each
    with_other_data = SensitivityInput(m, q, space, W, A, "lsq", type(inp.data)(inp.data.calib[:1], inp.data.val))
    layer_sensitivity("_counting", with_other_data)
    assert len(CALLS) == 2
    path.write_text("{not json")  # a damaged entry is recomputed
    layer_sensitivity("_counting", inp)
    assert len(CALLS) == 3


@pytest.mark.parametrize("method", ["noise", "hessian"])
def test_builtin_methods_give_full_tables(lenet_setup, method) -> None:
    m, q, space, _ = lenet_setup
    options = {"samples": 2} if method == "hessian" else {}
    table = layer_sensitivity(method, SensitivityInput(m, q, space, W, A, "lsq", data(), options), use_cache=False)
    for s in space.layers:
        row = table[s.name]
        assert set(row) == set(layer_choices(space, s))
        assert all(v >= 0 for v in row.values())
        # fewer bits never help: W2A2 is at least as bad as W8A8
        assert row[(2, 2)] >= row[(8, 8)]


def test_unknown_method_and_option() -> None:
    assert {"noise", "hessian", "measured", "measured_loss"} <= set(methods())
    with pytest.raises(MixedPrecisionError, match="unknown sensitivity method 'magic'"):
        layer_sensitivity("magic", None)  # type: ignore[arg-type]


@pytest.mark.slow
def test_measured_method(lenet_setup) -> None:
    m, q, space, _ = lenet_setup
    table = layer_sensitivity("measured", SensitivityInput(m, q, space, W, A, "lsq", data(), {"batches": 1}), use_cache=False)
    for s in space.layers:
        assert set(table[s.name]) == set(layer_choices(space, s))
        assert table[s.name][(8, 8)] == pytest.approx(0.0, abs=5.0)  # one 8-bit layer is close to FP32 (64 samples)


@pytest.mark.slow
def test_measured_loss_is_the_one_layer_models_loss_gain(lenet_setup) -> None:
    """Each entry is the validation cross-entropy of the model with only that layer's
    weights and input quantized, minus the FP32 model's: rebuilt here by hand for one
    layer and choice, it matches exactly. (An untrained LeNet on random labels: a coarse
    grid moves the loss further than a fine one, but not always up.)"""
    import torch
    import torch.nn.functional as F

    from qatlab.nn import calibrate, prepare_qat
    from qatlab.nn.fake_quant import FakeQuant

    m, q, space, _ = lenet_setup
    d = data()
    table = layer_sensitivity("measured_loss", SensitivityInput(m, q, space, W, A, "lsq", d, {"batches": 1}), use_cache=False)
    vx, vy = d.val
    with torch.no_grad():
        base = float(F.cross_entropy(m.eval()(vx).double(), vy))
    slot = space.layers[1]
    one = prepare_qat(m, W, A, "lsq", layer_bits={slot.name: (2, 4)})
    calibrate(one, iter([d.calib[0][0]]))
    layer = one.get_submodule(slot.name)
    for mod in one.modules():
        if isinstance(mod, FakeQuant) and mod is not layer.weight_fq and mod is not layer._input_fq:
            mod.enabled = False
    with torch.no_grad():
        loss = float(F.cross_entropy(one.eval()(vx).double(), vy))
    assert table[slot.name][(2, 4)] == loss - base
    for s in space.layers:
        row = table[s.name]
        assert set(row) == set(layer_choices(space, s))
        assert abs(row[(8, 8)]) < 0.05  # one 8-bit layer: the loss barely moves
        assert abs(row[(2, 2)]) > abs(row[(8, 8)])
