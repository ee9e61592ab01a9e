"""Folding search: choose PE/SIMD (and the window unit's SIMD, and where weights live)
per layer for a target frame rate, or the fastest design that fits the device.

Like FINN's ``SetFolding`` the target is a cycle budget per frame, ``T = clock / fps``,
that every unit must meet (a dataflow pipeline runs at its slowest unit's rate). Unlike
its greedy walk, we enumerate every feasible folding of each layer — PE over the
divisors of MH, SIMD over the divisors of MW, the window SIMD over the divisors of the
channels (and FINN's parallel window, under the FINN cost model), weight memory in
BRAM, LUTRAM or URAM (FINN's ``auto`` alone under the FINN cost model, whose estimate
counts an RTL MVU's LUTRAM weights nowhere) — price each with the cost model, and
for a budget T take per layer the cheapest option meeting T. "Cheapest" is the sum of
the layer's resources, each as a fraction of the device's budget for it (capacity x
FINN's recommended utilization limit), so a design spends what the device has most of.

"Fastest that fits" bisects over the achievable cycle counts for the smallest T whose
design fits; the explanation says which unit bounds the result and which resource
stops the next faster step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .devices import FINN_RES_LIMITS, RESOURCES, Device
from .errors import DoesNotFitError, UnreachableTargetError
from .folding import LayerFolding
from .model import LayerSpec


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


@dataclass
class _Table:
    """One layer's options for one unit, sorted by cycles."""

    cycles: np.ndarray
    frac: np.ndarray  # [n, 4] usage as fractions of the budget (inf: needs a resource the device lacks)
    usage: np.ndarray  # [n, 4] in RESOURCES order
    keys: list[tuple]

    @classmethod
    def build(cls, cycles: list[int], usage: list[list[int]], budget: np.ndarray, keys: list[tuple]) -> "_Table":
        order = np.argsort(np.asarray(cycles, dtype=np.int64), kind="stable")
        u = np.asarray(usage, dtype=np.int64).reshape(-1, len(RESOURCES))[order]
        return cls(np.asarray(cycles, dtype=np.int64)[order], _frac(u, budget), u, [keys[i] for i in order])

    def best(self, prices: np.ndarray) -> np.ndarray:
        """best[i]: the cheapest option among the first i+1 (fastest i+1) at these prices."""
        with np.errstate(invalid="ignore"):
            cost = np.where(np.isinf(self.frac), np.inf, self.frac * prices).sum(axis=1)
        run = np.minimum.accumulate(cost)
        idx = np.arange(cost.size)
        return np.maximum.accumulate(np.where(cost == run, idx, 0)), cost

    def pick(self, t: int, best: tuple[np.ndarray, np.ndarray]) -> int | None:
        i = int(np.searchsorted(self.cycles, t, side="right")) - 1
        if i < 0:
            return None
        j = int(best[0][i])
        return j if np.isfinite(best[1][j]) else None


@dataclass
class SearchResult:
    folds: list[LayerFolding]
    ii_cycles: int
    fps: float
    clock_mhz: float
    mode: str  # target | fastest
    target_fps: float | None
    bottleneck: str  # "layer.unit"
    explanation: str
    usage: dict[str, int] = field(default_factory=dict)  # compute + memories, FIFOs excluded
    elapsed_s: float = 0.0

    def folding(self, names: Sequence[str]) -> dict[str, LayerFolding]:
        return dict(zip(names, self.folds))


def _budget(device: Device, limits: Mapping[str, float] | float | None) -> np.ndarray:
    lim = (
        dict(FINN_RES_LIMITS)
        if limits is None
        else ({r: float(limits) for r in RESOURCES} if isinstance(limits, (int, float)) else {**FINN_RES_LIMITS, **limits})
    )
    for r, v in lim.items():
        if r not in RESOURCES or not 0 < v <= 1:
            raise ValueError(f"utilization limit for {r!r} must be in (0, 1], got {v!r}")
    return np.array([device.capacity(r) * lim[r] for r in RESOURCES], dtype=np.float64)


def _frac(usage: np.ndarray, budget: np.ndarray) -> np.ndarray:
    u = usage.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(budget > 0, u / np.where(budget > 0, budget, 1), np.where(u > 0, np.inf, 0.0))


def _tables(spec: LayerSpec, device: Device, budget: np.ndarray, res_type: str, styles: Sequence[str]) -> tuple[_Table, _Table | None]:
    g = spec.geom
    cyc, use, keys = [], [], []
    for pe in divisors(g.mh):
        for simd in divisors(g.mw):
            c = (g.mh // pe) * (g.mw // simd) * g.pixels
            for st in styles:
                lc = spec.mvau_cost(LayerFolding(pe, simd, None, st, res_type), device)
                tot = lc.compute + lc.weights + lc.activation
                cyc.append(c)
                use.append([tot.lut, tot.dsp, tot.bram18, tot.uram])
                keys.append((pe, simd, st))
    mv = _Table.build(cyc, use, budget, keys)
    if g.unit == "none":
        return mv, None
    cyc, use, keys = [], [], []
    options = [(ss, False) for ss in divisors(g.channels)]
    if g.unit == "swu" and spec.rtl_window:
        options.append((g.channels, True))  # FINN's parallel window: SIMD = C, a window per cycle
    for ss, pw in options:
        # The FMPadding of a padded conv runs at the window's SIMD; it never outpaces
        # the window, but the slower of the two is what the budget must hold.
        c = max(spec.window_cycles(ss, pw), spec.pad_cycles(ss))
        w = spec.window_cost(ss, pw)
        cyc.append(c)
        use.append([w.lut, w.dsp, w.bram18, w.uram])
        keys.append((ss, pw if g.unit == "swu" and spec.rtl_window else None))
    return mv, _Table.build(cyc, use, budget, keys)


class _Space:
    """All layers' option tables; picks a design for a cycle budget.

    The cheapest option per layer is judged at resource prices: all 1 to start with
    (each resource as a fraction of its budget), then doubled for every resource the
    design overflows, a few rounds — so a network that only fits by moving weights from
    one memory kind to another (URAM to BRAM, say) is found."""

    ROUNDS = 8

    def __init__(self, specs: Sequence[LayerSpec], device: Device, budget: np.ndarray, res_type: str, styles: Sequence[str]):
        self.specs = list(specs)
        self.budget = budget
        self.tables = [_tables(s, device, budget, res_type, styles) for s in self.specs]
        self.res_type = res_type
        self._best: dict[bytes, list] = {}

    def fastest_possible(self) -> tuple[int, str]:
        """The smallest cycle budget any folding meets, and the unit that sets it."""
        worst, who = -1, ""
        for s, (mv, un) in zip(self.specs, self.tables):
            for tab, unit in ((mv, "mvau"), (un, s.geom.unit)):
                if tab is None:
                    continue
                finite = np.isfinite(tab.frac).all(axis=1)
                if not finite.any():
                    continue
                c = int(tab.cycles[finite].min())
                if c > worst:
                    worst, who = c, f"{s.name}.{unit}"
        return worst, who

    def _bests(self, prices: np.ndarray) -> list:
        key = prices.tobytes()
        if key not in self._best:
            self._best[key] = [(mv.best(prices), un.best(prices) if un is not None else None) for mv, un in self.tables]
        return self._best[key]

    def _choose_at(self, t: int, prices: np.ndarray) -> tuple[list[LayerFolding], np.ndarray, list[tuple[int, str]]] | None:
        folds, total, cycles = [], np.zeros(len(RESOURCES), dtype=np.int64), []
        for s, (mv, un), (bm, bu) in zip(self.specs, self.tables, self._bests(prices)):
            i = mv.pick(t, bm)
            if i is None:
                return None
            pe, simd, st = mv.keys[i]
            total += mv.usage[i]
            cycles.append((int(mv.cycles[i]), f"{s.name}.mvau"))
            ss, pw = None, None
            if un is not None:
                j = un.pick(t, bu)
                if j is None:
                    return None
                ss, pw = un.keys[j]
                total += un.usage[j]
                cycles.append((int(un.cycles[j]), f"{s.name}.{s.geom.unit}"))
            folds.append(LayerFolding(pe, simd, ss, st, self.res_type, pw))
        return folds, total, cycles

    def choose(self, t: int) -> tuple[list[LayerFolding], np.ndarray, list[tuple[int, str]]] | None:
        """The design for budget t: the first that fits over the price rounds, else the
        first round's (for the error message)."""
        prices = np.ones(len(RESOURCES))
        first = None
        for _ in range(self.ROUNDS):
            got = self._choose_at(t, prices)
            if got is None:
                return None
            if first is None:
                first = got
            over = got[1] > self.budget + 1e-9
            if not over.any():
                return got
            prices = prices * np.where(over, 2.0, 1.0)
        return first

    def fits(self, usage: np.ndarray) -> bool:
        return bool(np.all(usage <= self.budget + 1e-9))

    def over(self, usage: np.ndarray, device: Device) -> str:
        parts = []
        for k, r in enumerate(RESOURCES):
            if usage[k] > self.budget[k] + 1e-9:
                cap = device.capacity(r)
                pct = 100.0 * usage[k] / cap if cap else float("inf")
                parts.append(f"{r.upper()} {int(usage[k])} ({pct:.0f}% of {cap}, limit {100 * self.budget[k] / cap if cap else 0:.0f}%)")
        return ", ".join(parts)


def _styles(device: Device, ram_style: str | None, cost_model: str = "qatlab") -> list[str]:
    if ram_style and ram_style != "auto":
        if ram_style == "ultra" and device.uram == 0:
            raise ValueError(f"ram_style 'ultra': device {device.name} has no UltraRAM")
        return [ram_style]
    if cost_model == "finn":
        # FINN's default build leaves ram_style=auto; its estimate counts LUTRAM weights
        # of the RTL MVU nowhere, so choosing them here would be a free lunch.
        return ["auto"]
    return ["block", "distributed"] + (["ultra"] if device.uram else [])


def search_folding(
    specs: Sequence[LayerSpec],
    device: Device,
    clock_mhz: float,
    *,
    target_fps: float | None = None,
    limits: Mapping[str, float] | float | None = None,
    res_type: str = "auto",
    ram_style: str | None = None,
) -> SearchResult:
    """Fold every layer for ``target_fps`` (the cheapest design meeting it) or, without
    a target, the fastest design within the device's budget. Raises
    UnreachableTargetError / DoesNotFitError with the reason when there is none."""
    t0 = time.perf_counter()
    budget = _budget(device, limits)
    cost_model = specs[0].cost_model if specs else "qatlab"
    space = _Space(specs, device, budget, res_type, _styles(device, ram_style, cost_model))
    clock_hz = clock_mhz * 1e6
    t_min, who_min = space.fastest_possible()
    if t_min < 0:
        raise DoesNotFitError(f"no layer folding fits device {device.name} at all")
    if target_fps is not None:
        if not target_fps > 0:
            raise UnreachableTargetError(f"target frame rate must be positive, got {target_fps}")
        t = int(clock_hz // target_fps)
        if t < t_min:
            raise UnreachableTargetError(
                f"target {target_fps:g} fps at {clock_mhz:g} MHz allows {t} cycles per frame, but {who_min} "
                f"needs at least {t_min} cycles even fully unfolded: at most {clock_hz / t_min:.6g} fps"
            )
        got = space.choose(t)
        assert got is not None
        folds, usage, cycles = got
        if not space.fits(usage):
            hint = ""
            try:
                best = search_folding(specs, device, clock_mhz, limits=limits, res_type=res_type, ram_style=ram_style)
                hint = f"; the fastest design that fits reaches {best.fps:.6g} fps"
            except (DoesNotFitError, UnreachableTargetError):
                pass
            raise UnreachableTargetError(
                f"target {target_fps:g} fps ({t} cycles per frame at {clock_mhz:g} MHz) does not fit {device.name}: "
                f"the cheapest folding meeting it needs {space.over(usage, device)}{hint}"
            )
        ii, bn = max(cycles)
        expl = (
            f"target {target_fps:g} fps -> at most {t} cycles per frame at {clock_mhz:g} MHz; cheapest folding "
            f"meeting it has II {ii} cycles ({clock_hz / ii:.6g} fps), set by {bn}"
        )
        return SearchResult(
            folds,
            ii,
            clock_hz / ii,
            clock_mhz,
            "target",
            target_fps,
            bn,
            expl,
            dict(zip(RESOURCES, map(int, usage))),
            time.perf_counter() - t0,
        )
    # fastest that fits: bisect over every achievable cycle count >= t_min
    cands = np.unique(np.concatenate([tab.cycles for pair in space.tables for tab in pair if tab is not None]))
    cands = cands[cands >= t_min]
    top = space.choose(int(cands[-1]))
    if top is None or not space.fits(top[1]):
        usage = top[1] if top is not None else np.zeros(len(RESOURCES))
        raise DoesNotFitError(
            f"the network does not fit {device.name} even at its smallest folding: it needs "
            f"{space.over(usage, device)} (weights alone: "
            f"{sum(s.geom.mh * s.geom.mw * s.w_bits for s in specs) / 1e6:.3g} Mbit on chip)"
        )
    lo, hi = 0, len(cands) - 1  # invariant: cands[hi] fits
    while lo < hi:
        mid = (lo + hi) // 2
        got = space.choose(int(cands[mid]))
        if got is not None and space.fits(got[1]):
            hi = mid
        else:
            lo = mid + 1
    got = space.choose(int(cands[hi]))
    assert got is not None
    folds, usage, cycles = got
    ii, bn = max(cycles)
    if hi == 0:
        why = f"every unit is at its fastest; {who_min} cannot go below {t_min} cycles per frame"
    else:
        nxt = space.choose(int(cands[hi - 1]))
        if nxt is None:
            why = f"no faster folding exists for {bn}"
        else:
            need = space.over(nxt[1], device) or "more than the budget in sum"
            why = f"the next faster step ({int(cands[hi - 1])} cycles per frame) would need {need}"
    expl = (
        f"fastest design within {device.name}'s budget: II {ii} cycles ({clock_hz / ii:.6g} fps at {clock_mhz:g} MHz), set by {bn}; {why}"
    )
    return SearchResult(
        folds, ii, clock_hz / ii, clock_mhz, "fastest", None, bn, expl, dict(zip(RESOURCES, map(int, usage))), time.perf_counter() - t0
    )
