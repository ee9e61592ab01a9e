"""The search as an integer linear program (scipy.optimize.milp, HiGHS).

Variables: ``y[k, v]`` = knob k takes value v; ``z[f, c]`` = factor f is in joint
configuration c (factors over one knob reuse that knob's ``y``; factors over none are
constants). Constraints: each knob takes one value; each factor's configuration agrees
with its knobs (``sum_{c: c_k = v} z[f, c] = y[k, v]`` for every knob k of its scope,
which with binaries makes z the exact product of the y's: no relaxation of pairwise
costs); additive budgets ``sum cost · z <= limit``; and a max-over-factors budget
(per-layer cycles) is exact by construction: every configuration over it is fixed to
0, one bound per factor configuration, never a sum. Objective: summed sensitivity.
The relative MIP gap is 0: the optimum, not an approximation of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from .errors import InfeasibleBudgetError, MixedPrecisionError
from .problem import Factor, Problem, feasible


@dataclass(frozen=True)
class Solution:
    assignment: tuple[int, ...]
    sensitivity: float
    totals: dict[str, float]


class _Layout:
    """Where each y and z lives in the variable vector, and each factor row's column."""

    def __init__(self, problem: Problem) -> None:
        self.y: list[list[int]] = []
        n = 0
        for d in problem.domains:
            self.y.append(list(range(n, n + len(d))))
            n += len(d)
        self.cols: list[list[int] | None] = []  # per factor: variable of each config row (None: constant)
        self.own: list[bool] = []
        for f in problem.factors:
            if not f.scope:
                self.cols.append(None)
                self.own.append(False)
            elif len(f.scope) == 1:
                k = f.scope[0]
                dom = problem.domains[k]
                self.cols.append([self.y[k][dom.index(c[0])] for c in f.configs])
                self.own.append(False)
            else:
                self.cols.append(list(range(n, n + len(f.configs))))
                self.own.append(True)
                n += len(f.configs)
        self.n = n


def _rows(problem: Problem, lay: _Layout) -> tuple[list[int], list[int], list[float], list[float], list[float]]:
    r, c, v, lo, hi = [], [], [], [], []
    row = 0
    for ys in lay.y:  # one value per knob
        r += [row] * len(ys)
        c += ys
        v += [1.0] * len(ys)
        lo.append(1.0)
        hi.append(1.0)
        row += 1
    for f, cols, own in zip(problem.factors, lay.cols, lay.own):
        if not own:
            continue
        for pos, k in enumerate(f.scope):
            for val, yk in zip(problem.domains[k], lay.y[k]):
                members = [cols[i] for i, cfg in enumerate(f.configs) if cfg[pos] == val]
                r += [row] * (len(members) + 1)
                c += members + [yk]
                v += [1.0] * len(members) + [-1.0]
                lo.append(0.0)
                hi.append(0.0)
                row += 1
    return r, c, v, lo, hi


def _constant(f: Factor, table: np.ndarray) -> float:
    return float(table[0])


def _solve(
    problem: Problem, lay: _Layout, objective: np.ndarray, extra: list[tuple[np.ndarray, float]], ub: np.ndarray
) -> np.ndarray | None:
    r, c, v, lo, hi = _rows(problem, lay)
    nrow = len(lo)
    A = coo_matrix((v, (r, c)), shape=(nrow, lay.n)).tocsr()
    cons = [LinearConstraint(A, lo, hi)]
    if extra:
        M = np.vstack([e[0] for e in extra])
        cons.append(LinearConstraint(M, -np.inf, np.array([e[1] for e in extra])))
    res = milp(
        objective,
        constraints=cons,
        integrality=np.ones(lay.n),
        bounds=Bounds(np.zeros(lay.n), ub),
        options={"mip_rel_gap": 0.0, "presolve": True},
    )
    if res.status != 0 or res.x is None:
        return None
    return res.x


def _decode(problem: Problem, lay: _Layout, x: np.ndarray) -> tuple[int, ...]:
    return tuple(dom[int(np.argmax([x[i] for i in ys]))] for dom, ys in zip(problem.domains, lay.y))


def _sum_row(problem: Problem, lay: _Layout, metric: str) -> tuple[np.ndarray, float]:
    """(coefficients, constant) of an additive metric."""
    row = np.zeros(lay.n)
    const = 0.0
    for f, cols in zip(problem.factors, lay.cols):
        t = f.sums.get(metric)
        if t is None:
            continue
        if cols is None:
            const += _constant(f, t)
        else:
            np.add.at(row, cols, np.asarray(t, dtype=np.float64))
    return row, const


def solve(problem: Problem, limits: Mapping[str, float] | None = None) -> Solution:
    """The least-sensitivity assignment with every metric within ``limits``
    ({metric: upper bound}; a max metric bounds every factor's value).

    Raises :class:`InfeasibleBudgetError` naming the cheapest reachable value of the
    first metric that cannot be met.
    """
    limits = dict(limits or {})
    known = set(problem.sum_metrics) | set(problem.max_metrics)
    unknown = sorted(set(limits) - known)
    if unknown:
        raise MixedPrecisionError(f"unknown metric(s) {', '.join(unknown)}; the problem has {', '.join(sorted(known))}")
    for m, lim in limits.items():
        if not math.isfinite(lim):
            raise MixedPrecisionError(f"limit of {m} must be finite, got {lim}")
    lay = _Layout(problem)
    ub = np.ones(lay.n)
    for m, lim in limits.items():
        if m not in problem.max_metrics:
            continue
        for f, cols in zip(problem.factors, lay.cols):
            t = f.maxes.get(m)
            if t is None:
                continue
            over = np.asarray(t) > lim
            if cols is None:
                if over[0]:
                    raise InfeasibleBudgetError(m, lim, cheapest(problem, m))
                continue
            for i in np.flatnonzero(over):
                ub[cols[i]] = 0.0
    extra = []
    for m, lim in limits.items():
        if m in problem.sum_metrics:
            row, const = _sum_row(problem, lay, m)
            scale = max(abs(lim - const), np.abs(row).max(initial=0.0), 1e-30)
            extra.append((row / scale, (lim - const) / scale))
    obj = np.zeros(lay.n)
    const_sens = 0.0
    for f, cols in zip(problem.factors, lay.cols):
        if cols is None:
            const_sens += float(f.sens[0])
        else:
            np.add.at(obj, cols, np.asarray(f.sens, dtype=np.float64))
    x = _solve(problem, lay, obj, extra, ub)
    if x is None:
        for m in limits:
            c = cheapest(problem, m)
            if c > limits[m] + 1e-9 * max(1.0, abs(limits[m])):
                raise InfeasibleBudgetError(m, limits[m], c)
        raise MixedPrecisionError(f"the budgets {limits} are each reachable alone but not together")
    a = _decode(problem, lay, x)
    s, tot = problem.evaluate(a)
    if not feasible(tot, limits, rel_tol=1e-6):
        raise MixedPrecisionError(f"the solver's answer violates the budget beyond tolerance: {tot} vs {limits}")
    return Solution(a, s, tot)


def cheapest(problem: Problem, metric: str) -> float:
    """The least value of ``metric`` any assignment reaches (sum: minimised; max: the
    least achievable largest factor value, minimised through an epigraph variable)."""
    lay = _Layout(problem)
    if metric in problem.sum_metrics:
        row, const = _sum_row(problem, lay, metric)
        x = _solve(problem, lay, row, [], np.ones(lay.n))
        assert x is not None
        return problem.evaluate(_decode(problem, lay, x))[1][metric]
    if metric not in problem.max_metrics:
        raise MixedPrecisionError(f"unknown metric {metric!r}")
    # minimise t subject to every factor's value <= t: t is one extra variable
    base = lay.n
    lay.n = base + 1
    rows = []
    floor = -math.inf
    for f, cols in zip(problem.factors, lay.cols):
        t = f.maxes.get(metric)
        if t is None:
            continue
        if cols is None:
            floor = max(floor, float(t[0]))
            continue
        row = np.zeros(lay.n)
        np.add.at(row, cols, np.asarray(t, dtype=np.float64))
        row[base] = -1.0
        rows.append((row, 0.0))
    obj = np.zeros(lay.n)
    obj[base] = 1.0
    ub = np.ones(lay.n)
    ub[base] = np.inf
    r, c, v, lo, hi = _rows(problem, lay)
    A = coo_matrix((v, (r, c)), shape=(len(lo), lay.n)).tocsr()
    cons = [LinearConstraint(A, lo, hi)]
    if rows:
        cons.append(LinearConstraint(np.vstack([e[0] for e in rows]), -np.inf, 0.0))
    integrality = np.ones(lay.n)
    integrality[base] = 0
    res = milp(obj, constraints=cons, integrality=integrality, bounds=Bounds(np.zeros(lay.n), ub), options={"mip_rel_gap": 0.0})
    assert res.x is not None
    lay.n = base
    a = _decode(problem, lay, res.x[:base])
    return max(problem.evaluate(a)[1][metric], floor)


def pareto(problem: Problem, metric: str, limits: list[float]) -> list[Solution]:
    """One solution per budget of ``metric`` (same order)."""
    return [solve(problem, {metric: lim}) for lim in limits]
