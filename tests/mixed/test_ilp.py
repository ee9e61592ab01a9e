"""The ILP against brute force on small random problems (sums and a max constraint)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.mixed import Factor, InfeasibleBudgetError, MixedPrecisionError, Problem, brute_force, cheapest, solve


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    n_knobs = draw(st.integers(1, 4))
    domains = tuple(tuple(sorted(draw(st.sets(st.sampled_from((2, 4, 8)), min_size=1, max_size=3)))) for _ in range(n_knobs))
    factors = []
    for i in range(draw(st.integers(1, 5))):
        scope = tuple(sorted(draw(st.sets(st.integers(0, n_knobs - 1), max_size=min(3, n_knobs)))))
        configs = tuple(itertools.product(*(domains[k] for k in scope)))
        n = len(configs)
        vals = st.lists(st.integers(0, 50), min_size=n, max_size=n)
        sens = np.array(draw(vals), dtype=float) / 7
        energy = np.array(draw(vals), dtype=float)
        cycles = np.array(draw(vals), dtype=float)
        factors.append(Factor(f"f{i}", scope, configs, sens, {"energy": energy}, {"cycles": cycles}))
    return Problem(domains, tuple(factors))


def _metric_range(p: Problem, metric: str) -> tuple[float, float]:
    vals = [p.evaluate(a)[1][metric] for a in itertools.product(*p.domains)]
    return min(vals), max(vals)


@settings(max_examples=80)
@given(problems(), st.floats(0, 1), st.floats(0, 1), st.booleans())
def test_ilp_matches_brute_force(p: Problem, e_frac: float, c_frac: float, use_cycles: bool) -> None:
    lo, hi = _metric_range(p, "energy")
    limits = {"energy": lo - 1 + (hi - lo + 2) * e_frac}
    if use_cycles:
        clo, chi = _metric_range(p, "cycles")
        limits["cycles"] = clo - 1 + (chi - clo + 2) * c_frac
    ref = brute_force(p, limits)
    if ref is None:
        with pytest.raises(MixedPrecisionError) as e:
            solve(p, limits)
        alone = [m for m in limits if _metric_range(p, m)[0] > limits[m]]
        if alone:  # a metric no configuration meets: the error names its cheapest value
            assert isinstance(e.value, InfeasibleBudgetError)
            assert e.value.cheapest == pytest.approx(_metric_range(p, e.value.metric)[0])
            assert e.value.cheapest > e.value.budget
        else:
            assert "not together" in str(e.value)
        return
    sol = solve(p, limits)
    assert sol.sensitivity == pytest.approx(ref[1], abs=1e-9)
    assert sol.totals["energy"] <= limits["energy"] + 1e-6
    if use_cycles:
        assert sol.totals["cycles"] <= limits["cycles"]


@settings(max_examples=40)
@given(problems())
def test_cheapest_is_the_minimum(p: Problem) -> None:
    for metric in ("energy", "cycles"):
        assert cheapest(p, metric) == pytest.approx(_metric_range(p, metric)[0])


def test_max_constraint_is_per_factor_not_a_sum() -> None:
    # Two layers of 6 cycles each meet a 6-cycle bound (a sum would need 12).
    d = ((2, 8), (2, 8))
    fs = tuple(
        Factor(f"l{i}", (i,), ((2,), (8,)), np.array([1.0, 0.0]), {"energy": np.array([1.0, 4.0])}, {"cycles": np.array([6.0, 9.0])})
        for i in range(2)
    )
    p = Problem(d, fs)
    sol = solve(p, {"cycles": 6})
    assert sol.assignment == (2, 2) and sol.totals["cycles"] == 6
    with pytest.raises(InfeasibleBudgetError, match="cheapest configuration needs 6"):
        solve(p, {"cycles": 5})


def test_bad_inputs_are_named() -> None:
    p = Problem(((2, 4),), (Factor("f", (0,), ((2,), (4,)), np.zeros(2), {"energy": np.ones(2)}),))
    with pytest.raises(MixedPrecisionError, match="unknown metric"):
        solve(p, {"lut": 1.0})
    with pytest.raises(MixedPrecisionError, match="does not cover"):
        Problem(((2, 4),), (Factor("f", (0,), ((2,),), np.zeros(1)),))
    with pytest.raises(MixedPrecisionError, match="finite"):
        Problem(((2,),), (Factor("f", (0,), ((2,),), np.array([np.nan])),))


def test_fifty_layers_solve() -> None:
    rng = np.random.default_rng(0)
    dom = (2, 4, 8)
    knobs = tuple([dom] * 100)
    fs = []
    for i in range(50):
        cfg = tuple(itertools.product(dom, dom))
        sens = np.array([1 / (w * a) for w, a in cfg]) * rng.uniform(0.5, 2)
        e = np.array([w * a for w, a in cfg], dtype=float) * rng.uniform(0.5, 2)
        fs.append(Factor(f"l{i}", (2 * i, 2 * i + 1), cfg, sens, {"energy": e}))
    p = Problem(knobs, tuple(fs))
    full = p.evaluate((8,) * 100)[1]["energy"]
    sol = solve(p, {"energy": 0.4 * full})
    assert sol.totals["energy"] <= 0.4 * full * (1 + 1e-9)
    assert set(sol.assignment) > {8}
