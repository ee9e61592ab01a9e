"""Timing for benchmarks (wall clock, or the process's CPU time): medians, round-robin interleaving, machine facts.

Shared by ``workbook bench`` and the scripts in ``benchmarks/``. It lives in the
library, below both, so that neither imports the other to time something.

Figures are meant as ratios against a baseline timed in the same run: machines are
shared and noisy, so absolute seconds mean little, and running the candidates
round-robin makes drift hit all of them alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping

# ``cpu`` counts only this process's CPU time: on a shared machine, waiting for a core
# then does not count against whichever candidate happened to be running.
CLOCKS = {"wall": "perf_counter", "cpu": "process_time"}


def _clock(name: str) -> Callable[[], float]:
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {name!r}")
    return getattr(time, CLOCKS[name])  # looked up per call: tests stand a fake clock in


def median_time(fn: Callable[[], object], repeats: int, clock: str = "wall") -> float:
    """Median seconds of ``repeats`` back-to-back calls of ``fn`` (``clock``: wall or cpu)."""
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    now = _clock(clock)
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        times.append(now() - t0)
    return statistics.median(times)


def interleaved_samples(
    fns: Mapping[str, Callable[[], object]], repeats: int = 15, warmup: int = 2, clock: str = "wall"
) -> dict[str, list[float]]:
    """Every call's seconds for each fn, run round-robin so drift hits all of them alike."""
    if not fns:
        raise ValueError("interleaved needs at least one function to time")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    _clock(clock)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(median_time(fn, 1, clock))
    return samples


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int = 15, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each fn, run round-robin so drift hits all of them alike."""
    return {name: statistics.median(times) for name, times in interleaved_samples(fns, repeats, warmup).items()}


def machine() -> dict[str, object]:
    """What a figure was measured on: host, CPU, core count, torch version and threads."""
    import torch  # deferred: the timing functions above do not need torch

    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def load_average() -> float | None:
    """The 1-minute load average (None where the OS keeps none): recorded beside a figure,
    so a reader can tell a quiet run from a loaded one."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


__all__ = ["interleaved", "load_average", "machine", "median_time"]
