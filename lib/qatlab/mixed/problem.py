"""The search problem: knobs with finite domains, and factors that price them.

A :class:`Factor` is one op of the network: the knobs its cost depends on (its
``scope``) and, for every joint value of them, a sensitivity, additive costs (energy,
cycles, resources, bytes) and "max" costs (per-layer cycles: a dataflow design runs
at its slowest layer's rate). A configuration's totals are sums over factors, taken in
factor order, so they reproduce a simulator's totals summed op by op bit for bit.
:func:`brute_force` is the plain reference the ILP is tested against.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .errors import MixedPrecisionError


@dataclass(frozen=True)
class Factor:
    name: str
    scope: tuple[int, ...]  # knob indices
    configs: tuple[tuple[int, ...], ...]  # joint knob values, one per table row
    sens: np.ndarray  # [len(configs)]
    sums: Mapping[str, np.ndarray] = field(default_factory=dict)  # additive metrics
    maxes: Mapping[str, np.ndarray] = field(default_factory=dict)  # max-over-factors metrics

    def row(self, assignment: Sequence[int]) -> int:
        key = tuple(assignment[k] for k in self.scope)
        try:
            return self.configs.index(key)
        except ValueError:
            raise MixedPrecisionError(f"factor {self.name!r}: no entry for knob values {key}") from None


@dataclass(frozen=True)
class Problem:
    domains: tuple[tuple[int, ...], ...]
    factors: tuple[Factor, ...]

    def __post_init__(self) -> None:
        for f in self.factors:
            want = list(itertools.product(*(self.domains[k] for k in f.scope)))
            if sorted(f.configs) != sorted(want):
                raise MixedPrecisionError(f"factor {f.name!r}: its table does not cover its knobs' domains")
            n = len(f.configs)
            for t in (f.sens, *f.sums.values(), *f.maxes.values()):
                if np.shape(t) != (n,) or not np.all(np.isfinite(t)):
                    raise MixedPrecisionError(f"factor {f.name!r}: every table needs {n} finite entries")

    @property
    def sum_metrics(self) -> tuple[str, ...]:
        return tuple(sorted({m for f in self.factors for m in f.sums}))

    @property
    def max_metrics(self) -> tuple[str, ...]:
        return tuple(sorted({m for f in self.factors for m in f.maxes}))

    def evaluate(self, assignment: Sequence[int]) -> tuple[float, dict[str, float]]:
        """(summed sensitivity, {metric: total}) of one assignment, summed in factor order."""
        if len(assignment) != len(self.domains):
            raise MixedPrecisionError(f"assignment has {len(assignment)} values for {len(self.domains)} knobs")
        for k, v in enumerate(assignment):
            if v not in self.domains[k]:
                raise MixedPrecisionError(f"knob {k}: {v} is not in its domain {self.domains[k]}")
        sens = 0.0
        sums: dict[str, float] = {m: 0 for m in self.sum_metrics}
        maxes: dict[str, float] = {m: -math.inf for m in self.max_metrics}
        for f in self.factors:
            r = f.row(assignment)
            sens += float(f.sens[r])
            for m, t in f.sums.items():
                sums[m] += t[r].item()
            for m, t in f.maxes.items():
                maxes[m] = max(maxes[m], t[r].item())
        return sens, {**sums, **maxes}


def feasible(totals: Mapping[str, float], limits: Mapping[str, float], rel_tol: float = 1e-9) -> bool:
    return all(totals[m] <= lim + rel_tol * max(1.0, abs(lim)) for m, lim in limits.items())


def brute_force(problem: Problem, limits: Mapping[str, float]) -> tuple[tuple[int, ...], float] | None:
    """The least-sensitivity assignment within ``limits`` ({metric: upper bound}) by
    enumeration (the reference), or None when none meets them."""
    best: tuple[tuple[int, ...], float] | None = None
    for a in itertools.product(*problem.domains):
        s, tot = problem.evaluate(a)
        if feasible(tot, limits) and (best is None or s < best[1]):
            best = (tuple(a), s)
    return best
