"""The tasks a sweep has in flight, and which of them are running rather than queued.

Ray tells the driver when a task ends (``ray.wait``), not when it starts. The start
is inferred the way Ray's scheduler hands out slots: a task becomes runnable when
it is submitted (a trial that takes its FP32 model from another task: once that task
has ended), and runnable tasks take
free slots of the cluster's capacity first come, first served; a task keeps its slot
until it ends. The inferred start is what ``resources.timeout_s`` counts from and
what the progress bar calls running.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Hashable, Iterator

FP32 = "fp32"
TRIAL = "trial"
PLAN = "plan"  # a mixed-precision plan: waits for its group's FP32 model like a trial


@dataclasses.dataclass
class Job:
    kind: str  # FP32 (a task that only pretrains), TRIAL or PLAN
    key: str  # the FP32 key of the group
    trial_id: str | None  # None for an FP32 job
    submitted: float
    runnable_since: float | None  # None while a trial waits for its FP32 task
    seq: int
    source: bool  # it hands the group's FP32 model to the others
    running_since: float | None = None


class Flight:
    """Jobs by their ObjectRef (any hashable), with the inferred running set."""

    def __init__(self) -> None:
        self.jobs: dict[Hashable, Job] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[tuple[Hashable, Job]]:
        return iter(list(self.jobs.items()))

    def add(self, ref: Hashable, kind: str, key: str, trial_id: str | None, now: float, runnable: bool, source: bool = False) -> Job:
        if kind not in (FP32, TRIAL, PLAN):
            raise ValueError(f"job kind must be {FP32!r}, {TRIAL!r} or {PLAN!r}, got {kind!r}")
        if (kind == TRIAL) != (trial_id is not None):
            raise ValueError(f"a {kind} job {'needs' if kind == TRIAL else 'takes no'} trial id, got {trial_id!r}")
        if ref in self.jobs:
            raise ValueError(f"ref {ref!r} is already in flight")
        if kind == FP32 and not source:
            raise ValueError("an FP32 job is its group's source")
        job = Job(kind, key, trial_id, now, now if runnable else None, next(self._seq), source)
        self.jobs[ref] = job
        return job

    def pop(self, ref: Hashable) -> Job:
        return self.jobs.pop(ref)

    def refs(self) -> list[Any]:
        return list(self.jobs)

    def fp32_done(self, key: str, now: float) -> None:
        """The source of ``key`` ended: the trials waiting for its FP32 model become runnable."""
        for job in self.jobs.values():
            if job.kind in (TRIAL, PLAN) and job.key == key and job.runnable_since is None:
                job.runnable_since = now

    def waiting_on(self, key: str) -> list[tuple[Hashable, Job]]:
        """The trials in flight that take ``key``'s FP32 model from its source."""
        return [(r, j) for r, j in self.jobs.items() if j.key == key and not j.source]

    def infer_running(self, capacity: float, now: float) -> None:
        """Give free slots (of ``capacity`` trial-shaped ones) to runnable jobs, oldest first."""
        free = capacity - sum(1 for j in self.jobs.values() if j.running_since is not None)
        waiting = sorted((j for j in self.jobs.values() if j.running_since is None and j.runnable_since is not None),
                         key=lambda j: (j.runnable_since, j.seq))  # fmt: skip
        for job in waiting:
            if free < 1 and not math.isinf(free):
                break
            job.running_since = now
            free -= 1

    def counts(self) -> dict[str, int]:
        """running / queued trials and running FP32 tasks, for the progress bar."""
        trials = [j for j in self.jobs.values() if j.kind == TRIAL]
        running = sum(1 for j in trials if j.running_since is not None)
        fp32 = sum(1 for j in self.jobs.values() if j.kind == FP32 and j.running_since is not None)
        return {"running": running, "queued": len(trials) - running, "pretraining": fp32}

    def overdue(self, timeout_s: float, now: float) -> list[tuple[Hashable, Job]]:
        return [(r, j) for r, j in self.jobs.items() if j.running_since is not None and now - j.running_since > timeout_s]
