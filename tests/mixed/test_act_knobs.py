"""Every activation quantizer is a knob: a squeeze-excitation product, a residual sum,
pooled values and the logits get their own bits, sensitivities and cost factors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from qatlab.intmodel import convert
from qatlab.mixed import MixedPrecisionError, brute_force, cost_tables, decision_space, simulate_costs, solve, with_sensitivity
from qatlab.mixed.capture import float_twin, quantizer_values
from qatlab.mixed.sens_types import act_spec_at
from qatlab.mixed.sensitivity import SensitivityInput, check_table, layer_sensitivity
from qatlab.mixed.space import act_choices, activation_quantizers
from qatlab.nn import calibrate, prepare_qat
from qatlab.nn.errors import UnsupportedLayerError
from qatlab.quant import fake_quantize

from .conftest import A, W, data


class SEBlock(nn.Module):
    """conv -> SE gate (pool, fc, relu, fc, hardsigmoid) times features -> conv, plus the
    block's input (a residual add), then pooled logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(4, 2, 1)
        self.fc2 = nn.Conv2d(2, 4, 1)
        self.gate = nn.Hardsigmoid()
        self.proj = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        s = self.gate(self.fc2(torch.relu(self.fc1(self.pool(h)))))
        y = self.proj(h * s) + h
        return self.head(self.pool(y).flatten(1))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def se_model() -> nn.Module:
    torch.manual_seed(0)
    return SEBlock().eval()


def batches(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(16, 1, 28, 28, generator=g) for _ in range(n)]


def prepared(layer_bits: dict | None = None, bits: int = 8, first_last_bits: int | None = None):
    q = prepare_qat(se_model(), W.with_(bits=bits), A.with_(bits=bits), "lsq", first_last_bits=first_last_bits, layer_bits=layer_bits)
    calibrate(q, batches())
    return q


@pytest.fixture(scope="module")
def setup():
    q = prepared(first_last_bits=8)
    return q, decision_space(q, (2, 4, 8), first_last_bits=8), convert(q.eval(), (1, 28, 28))


def test_quantizers_feeding_no_layer_are_knobs(setup) -> None:
    q, space, _ = setup
    keys = {a.key for a in space.acts}
    mods = dict(q.named_modules())
    # the residual sum, the gate's lookup table (read by the product), the stem's output
    # (read by the pool, the product and the add), the gate conv's output and the logits
    kinds = {type(mods[k.removesuffix(".act_fq")]).__name__ for k in keys}
    assert kinds == {"QuantAdd", "QuantLUT", "QuantConv2d", "QuantLinear"}
    assert {"stem.act_fq", "fc2.act_fq", "head.act_fq"} <= keys
    # every activation quantizer of the model has exactly one knob
    assert len({k.name for k in space.knobs if k.kind == "a"}) == len(activation_quantizers(q))
    logits = space.knobs[space.knob_of_value(space.layers[-1].op)]
    assert logits.domain == (8,)  # first_last_bits pins the logits as prepare_qat does
    for a in space.acts:
        assert space.knobs[a.knob].kind == "a"


def test_layer_bits_round_trips_both_forms(setup) -> None:
    _, space, _ = setup
    doms = [k.domain for k in space.knobs]
    for assign in itertools.islice(itertools.product(*doms), 0, None, 97):
        lb = space.layer_bits(assign)
        assert all(len(v) == 2 for k, v in lb.items() if k in {s.name for s in space.layers})
        assert all(len(lb[a.key]) == 1 for a in space.acts)
        assert space.assignment(lb) == tuple(assign)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_cost_equals_the_uniform_trial(setup, bits) -> None:
    """The tables' uniform(b) costs what prepare_qat at WbAb (same pinned ends) costs."""
    _, space, im = setup
    sens = {s.name: dict.fromkeys(itertools.product(space.knobs[s.w_knob].domain, space.knobs[s.a_knob].domain), 0.0) for s in space.layers}
    sens.update({a.key: dict.fromkeys(act_choices(space, a), 0.0) for a in space.acts})
    problem = with_sensitivity(cost_tables(im, space), sens)
    predicted = problem.evaluate(space.uniform(bits))[1]
    uniform = convert(prepared(bits=bits, first_last_bits=8).eval(), (1, 28, 28))
    actual = simulate_costs(uniform)
    for m in ("asic_energy_pj", "asic_cycles", "weight_bytes", "bops"):
        assert predicted[m] == actual[m], m
    # and a trial built from the space's layer_bits is that same network
    via = convert(prepared(space.layer_bits(space.uniform(bits))).eval(), (1, 28, 28))
    assert simulate_costs(via) == actual


def test_mixed_activation_bits_are_priced_exactly(setup) -> None:
    _, space, im = setup
    sens = {s.name: dict.fromkeys(itertools.product(space.knobs[s.w_knob].domain, space.knobs[s.a_knob].domain), 0.0) for s in space.layers}
    sens.update({a.key: dict.fromkeys(act_choices(space, a), 0.0) for a in space.acts})
    problem = with_sensitivity(cost_tables(im, space), sens)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        assign = tuple(k.domain[int(torch.randint(len(k.domain), (1,), generator=g))] for k in space.knobs)
        trained = convert(prepared(space.layer_bits(assign)).eval(), (1, 28, 28))
        assert simulate_costs(trained)["asic_energy_pj"] == problem.evaluate(assign)[1]["asic_energy_pj"]


@pytest.mark.parametrize("method", ["noise", "hessian", "measured", "measured_loss"])
def test_every_method_scores_the_new_knobs(setup, method) -> None:
    q, space, _ = setup
    opts = {"samples": 2} if method == "hessian" else {}
    table = layer_sensitivity(method, SensitivityInput(se_model(), q, space, W, A, "lsq", data(), opts), use_cache=False)
    check_table(table, space)
    for a in space.acts:
        row = table[a.key]
        assert set(row) == set(act_choices(space, a))
        if len(row) > 1 and not method.startswith("measured"):
            assert row[(0, 2)] >= row[(0, 8)] >= 0.0  # fewer bits, more noise
    lut = next(a.key for a in space.acts if a.key.startswith("gate"))
    if method == "noise":
        assert table[lut][(0, 2)] > 0.0


def test_missing_knob_sensitivity_is_named(setup) -> None:
    _, space, im = setup
    sens = {s.name: dict.fromkeys(itertools.product(space.knobs[s.w_knob].domain, space.knobs[s.a_knob].domain), 0.0) for s in space.layers}
    with pytest.raises(MixedPrecisionError, match="no sensitivity for quantizer"):
        with_sensitivity(cost_tables(im, space), sens)
    with pytest.raises(MixedPrecisionError, match="lacks quantizer"):
        check_table(sens, space)


def test_ilp_matches_brute_force_with_knob_factors(setup) -> None:
    """Random sensitivities on every layer and quantizer: the ILP's optimum is brute force's
    (two widths per knob keep the enumeration to a few thousand configurations)."""
    q, _, im = setup
    space = decision_space(q, (2, 8), first_last_bits=8)
    assert space.acts and space.size() <= 4096
    tables = cost_tables(im, space)
    g = torch.Generator().manual_seed(5)

    def r() -> float:
        return float(torch.rand((), generator=g))

    for _ in range(3):
        sens = {
            s.name: {c: r() for c in itertools.product(space.knobs[s.w_knob].domain, space.knobs[s.a_knob].domain)} for s in space.layers
        }
        sens.update({a.key: {c: r() for c in act_choices(space, a)} for a in space.acts})
        problem = with_sensitivity(tables, sens)
        full = problem.evaluate(space.uniform(8))[1]["asic_energy_pj"]
        low = problem.evaluate(space.uniform(2))[1]["asic_energy_pj"]
        lim = {"asic_energy_pj": low + (full - low) * r()}
        ref = brute_force(problem, lim)
        sol = solve(problem, lim)
        assert ref is not None and sol.sensitivity == pytest.approx(ref[1], abs=1e-9)


def test_pins_take_the_one_element_form() -> None:
    q = prepared()
    key = next(k for k in activation_quantizers(q) if k.startswith("add"))
    space = decision_space(q, (2, 4, 8), pins={key: [4]})
    act = next(a for a in space.acts if a.key == key)
    assert space.knobs[act.knob].domain == (4,)
    with pytest.raises(MixedPrecisionError, match="needs \\[a_bits\\]"):
        decision_space(q, (2, 4, 8), pins={key: [4, 4]})
    with pytest.raises(MixedPrecisionError, match="needs \\[w_bits, a_bits\\]"):
        decision_space(q, (2, 4, 8), pins={"proj": [4]})


def test_assignment_rejects_bad_layer_bits(setup) -> None:
    _, space, _ = setup
    lb = space.layer_bits(space.uniform(4))
    with pytest.raises(MixedPrecisionError, match="neither a layer nor a quantizer"):
        space.assignment({**lb, "nope": [4]})
    key = space.acts[0].key
    with pytest.raises(MixedPrecisionError, match=f"does not name quantizer {key!r}"):
        space.assignment({k: v for k, v in lb.items() if k != key})
    with pytest.raises(MixedPrecisionError, match="takes \\[a_bits\\]"):
        space.assignment({**lb, key: [4, 4]})
    with pytest.raises(MixedPrecisionError, match="needs \\[w_bits, a_bits\\]"):
        space.assignment({**lb, "proj": [4]})


def test_prepare_rejects_bad_one_element_entries() -> None:
    q = prepared()
    key = next(k for k in activation_quantizers(q) if k.startswith("add"))
    with pytest.raises(UnsupportedLayerError, match=f"{key!r} is an activation quantizer's owner and takes \\[a_bits\\]"):
        prepare_qat(se_model(), W, A, "lsq", layer_bits={key: [4, 4]})
    with pytest.raises(UnsupportedLayerError, match="'proj' is a conv/linear layer and takes \\[w_bits, a_bits\\]"):
        prepare_qat(se_model(), W, A, "lsq", layer_bits={"proj": [4]})
    with pytest.raises(UnsupportedLayerError, match="'nope', neither a conv/linear layer nor an activation quantizer's owner"):
        prepare_qat(se_model(), W, A, "lsq", layer_bits={"nope": [4]})


def test_float_twin_values_are_the_fp32_networks(setup) -> None:
    """What the sensitivities read for a quantizer that feeds no layer is the FP32
    network's own tensor there (here the residual sum, computed by hand)."""
    q, space, _ = setup
    m = se_model()
    x = batches(1)[0]
    twin = float_twin(q)
    fqs = activation_quantizers(twin)
    add = next(a.key for a in space.acts if a.key.startswith("add"))
    got = quantizer_values(twin, {add: fqs[add]}, [x])[add]
    with torch.no_grad():
        h = torch.relu(m.stem(x))
        want = m.proj(h * m.gate(m.fc2(torch.relu(m.fc1(m.pool(h)))))) + h
        assert torch.allclose(twin(x), m(x), atol=1e-5)
    assert torch.allclose(got, want, atol=1e-5)
    # the noise score of that quantizer is its tensor's noise-to-signal ratio
    table = layer_sensitivity("noise", SensitivityInput(m, q, space, W, A, "lsq", data()), use_cache=False)
    v = quantizer_values(twin, {add: fqs[add]}, [data().calib[0][0]])[add]
    for _, b in act_choices(space, next(a for a in space.acts if a.key == add)):
        ref = float(((fake_quantize(v, act_spec_at(fqs[add].spec, b)) - v).double() ** 2).sum() / (v.double() ** 2).sum())
        assert table[add][(0, b)] == pytest.approx(ref, rel=1e-9)


def test_act_candidates_give_the_activation_knobs_their_own_domain() -> None:
    q = prepare_qat(se_model(), W, A)
    calibrate(q, batches())
    space = decision_space(q, (2, 4, 8), act_candidates=(8, 4))
    assert space.act_candidates == (4, 8)
    for k in space.knobs:
        assert k.domain == ((2, 4, 8) if k.kind == "w" else (4, 8)), k.name
    assert decision_space(q, (2, 4, 8), act_candidates=(2, 4, 8)).act_candidates == ()  # the same as leaving it out
    with pytest.raises(MixedPrecisionError, match="act_candidates must be distinct bit widths"):
        decision_space(q, (2, 4, 8), act_candidates=(1, 4))
