"""Predicted cost == the simulators' cost of the IntModel built with the chosen bits."""

from __future__ import annotations

import pytest

from qatlab.hw.asic import ArrayConfig
from qatlab.mixed import (
    Budget,
    FpgaTarget,
    InfeasibleBudgetError,
    MixedPrecisionError,
    SensitivityInput,
    cheapest_reachable,
    cost_tables,
    layer_sensitivity,
    pareto,
    search,
    simulate_costs,
    with_sensitivity,
)

from .conftest import A, W, converted, data


@pytest.fixture(scope="module")
def tables(lenet_setup):
    m, q, space, im = lenet_setup
    sens = layer_sensitivity("noise", SensitivityInput(m, q, space, W, A, "lsq", data()), use_cache=False)
    return cost_tables(im, space, ArrayConfig(), FpgaTarget("ZCU104")), sens


@pytest.mark.parametrize("metric, value", [("asic_energy", 0.45), ("bops", 0.3), ("fpga_lut", 0.6), ("weight_bytes", 0.35)])
def test_predicted_equals_simulated(lenet_setup, tables, metric, value) -> None:
    m, _, _, _ = lenet_setup
    t, sens = tables
    cfg = search(t, sens, Budget(metric, value, relative=True))
    _, im = converted(m, cfg.layer_bits)
    sim = simulate_costs(im, ArrayConfig(), "ZCU104", t.folding)
    assert any(b != [8, 8] for b in cfg.layer_bits.values())  # the budget forced lower bits somewhere
    for k, v in sim.items():
        assert cfg.native[k] == v, k  # exact: the same per-op figures, summed in the same order


def test_budget_is_met_and_tighter_budgets_cost_accuracy(tables) -> None:
    t, sens = tables
    front = pareto(t, sens, "asic_energy", [0.35, 0.5, 0.7, 1.0], relative=True)
    full = search(t, sens, Budget("asic_energy", 1.0, relative=True)).predicted["asic_energy"]
    for c, frac in zip(front, [0.35, 0.5, 0.7, 1.0]):
        assert c.predicted["asic_energy"] <= frac * full * (1 + 1e-9)
    sens_sum = [c.sensitivity for c in front]
    assert sens_sum == sorted(sens_sum, reverse=True)


def test_fps_budget_is_a_per_layer_cycle_bound(tables) -> None:
    t, sens = tables
    p = with_sensitivity(t, sens)
    best = cheapest_reachable(t, p, "fpga_fps")
    cfg = search(t, sens, Budget("fpga_fps", best))
    assert cfg.predicted["fpga_fps"] >= best * (1 - 1e-12)
    with pytest.raises(InfeasibleBudgetError, match="fpga_fps >= .* the fastest configuration reaches") as e:
        search(t, sens, Budget("fpga_fps", best * 1.5))
    assert e.value.cheapest == pytest.approx(best)


def test_infeasible_budget_names_the_cheapest_cost(tables) -> None:
    t, sens = tables
    p = with_sensitivity(t, sens)
    floor = cheapest_reachable(t, p, "asic_energy")
    with pytest.raises(InfeasibleBudgetError) as e:
        search(t, sens, Budget("asic_energy", floor * 0.5))
    assert e.value.metric == "asic_energy" and e.value.unit == "uJ"
    assert e.value.cheapest == pytest.approx(floor)
    assert f"{floor:.6g} uJ" in str(e.value)
    search(t, sens, Budget("asic_energy", floor * 1.000001))  # just above: reachable


def test_bad_budgets_are_named(tables) -> None:
    t, sens = tables
    with pytest.raises(MixedPrecisionError, match="unknown metric 'joules'"):
        Budget("joules", 1.0)
    with pytest.raises(MixedPrecisionError, match="positive finite"):
        Budget("asic_energy", -1.0)
    with pytest.raises(MixedPrecisionError, match="no sensitivity for layer"):
        search(t, {}, Budget("asic_energy", 0.5, relative=True))
