"""Budgets and the search: the most accurate per-layer bits within one hardware budget.

A :class:`Budget` names one metric (:mod:`.metrics`) and a value, absolute (in the
metric's unit: µJ, cycles, LUTs, fps, bytes, BOPs) or relative (a fraction of what
the uniform W8A8 network costs; for ``fpga_fps`` a multiple of its frame rate).
:func:`search` solves the ILP (:mod:`.ilp`) for the least summed sensitivity within
it; :func:`pareto` does so for N budgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from .costs import CostTables, with_sensitivity
from .errors import InfeasibleBudgetError, MixedPrecisionError
from .ilp import cheapest, solve
from .metrics import Metric, get_metric
from .problem import Problem


@dataclass(frozen=True)
class Budget:
    metric: str
    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        get_metric(self.metric)
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value) or self.value <= 0:
            raise MixedPrecisionError(f"budget of {self.metric} must be a positive finite number, got {self.value!r}")

    def describe(self) -> str:
        m = get_metric(self.metric)
        if self.relative:
            return f"{self.metric} {'>=' if m.kind == 'fps' else '<='} {self.value:g} x uniform W8A8"
        return f"{self.metric} {'>=' if m.kind == 'fps' else '<='} {self.value:g} {m.unit}"


@dataclass(frozen=True)
class MixedConfig:
    """One chosen configuration: per-layer bits and its predicted costs."""

    budget: Budget
    layer_bits: dict[str, list[int]]
    assignment: tuple[int, ...]
    sensitivity: float
    predicted: dict[str, float]  # every metric the tables price, in its unit
    native: dict[str, float]  # the same in table units (pJ, cycles), as the simulators report


def _clock_hz(tables: CostTables) -> float:
    if tables.clock_mhz is None:
        raise MixedPrecisionError("fpga_fps needs FPGA cost tables (cost_tables(..., fpga=FpgaTarget(...)))")
    return tables.clock_mhz * 1e6


def to_units(tables: CostTables, native: Mapping[str, float]) -> dict[str, float]:
    """Table totals in the metrics' units (µJ, fps, ...)."""
    from .metrics import METRICS

    out = {}
    for m in METRICS.values():
        if m.table not in native:
            continue
        v = native[m.table]
        out[m.name] = _clock_hz(tables) / v if m.kind == "fps" else v / m.scale
    return out


def uniform_cost(tables: CostTables, problem: Problem, bits: int = 8) -> dict[str, float]:
    """Totals (table units) of uniform ``bits`` (pinned knobs keep their pin)."""
    if any(bits not in k.domain and len(k.domain) > 1 for k in tables.space.knobs):
        sp = tables.space
        acts = f", act_candidates {list(sp.act_candidates)}" if sp.act_candidates else ""
        raise MixedPrecisionError(f"uniform W{bits}A{bits} is not in the search space (candidates {list(sp.candidates)}{acts})")
    return problem.evaluate(tables.space.uniform(bits))[1]


def limit_of(tables: CostTables, problem: Problem, budget: Budget) -> float:
    """The budget as an upper bound on its table (fps becomes a per-layer cycle bound)."""
    m = get_metric(budget.metric)
    if m.table not in problem.sum_metrics + problem.max_metrics:
        raise MixedPrecisionError(f"the cost tables do not price {budget.metric} (FPGA metrics need an FPGA target)")
    if m.kind == "fps":
        if budget.relative:
            return uniform_cost(tables, problem)[m.table] / budget.value
        return _clock_hz(tables) / budget.value
    if budget.relative:
        return uniform_cost(tables, problem)[m.table] * budget.value
    return budget.value * m.scale


def _in_units(tables: CostTables, m: Metric, native: float) -> float:
    return _clock_hz(tables) / native if m.kind == "fps" else native / m.scale


def search(
    tables: CostTables, sens: Mapping[str, Mapping[tuple[int, int], float]], budget: Budget, problem: Problem | None = None
) -> MixedConfig:
    """The least-sensitivity configuration within ``budget``; raises
    :class:`InfeasibleBudgetError` (in the budget's unit) when none is."""
    problem = problem or with_sensitivity(tables, sens)
    m = get_metric(budget.metric)
    limit = limit_of(tables, problem, budget)
    try:
        sol = solve(problem, {m.table: limit})
    except InfeasibleBudgetError as e:
        best = _in_units(tables, m, e.cheapest)
        want = budget.value if not budget.relative else _in_units(tables, m, limit)
        raise InfeasibleBudgetError(budget.metric, want, best, m.unit) from None
    return MixedConfig(
        budget, tables.space.layer_bits(sol.assignment), sol.assignment, sol.sensitivity, to_units(tables, sol.totals), dict(sol.totals)
    )


def pareto(
    tables: CostTables, sens: Mapping[str, Mapping[tuple[int, int], float]], metric: str, values: Sequence[float], relative: bool = False
) -> list[MixedConfig]:
    """One configuration per budget value (same order)."""
    problem = with_sensitivity(tables, sens)
    return [search(tables, sens, Budget(metric, float(v), relative), problem) for v in values]


def cheapest_reachable(tables: CostTables, problem: Problem, metric: str) -> float:
    """The best value of ``metric`` any configuration reaches, in its unit."""
    m = get_metric(metric)
    return _in_units(tables, m, cheapest(problem, m.table))
