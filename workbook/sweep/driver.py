"""The driver: submit each trial (and its group's FP32 source), wait on Ray, record every trial."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TextIO

from qatlab.atomic import write_text
from workbook.errors import CommandError
from workbook.results import STAGING_PREFIX, ResultStore
from workbook.sweep import cluster
from workbook.sweep import mixed as mixed_sweep
from workbook.sweep.flight import FP32, PLAN, TRIAL, Flight, Job
from workbook.sweep.plan import plan
from workbook.sweep.progress import Progress
from workbook.sweep.records import config_failure, driver_failure, iso, outcome_line
from workbook.sweep.summary import SweepSummary, header_line, print_summary, write_manifest
from workbook.sweep.tasks import remote

if TYPE_CHECKING:
    from workbook.spec import Spec, Trial


def run_sweep(
    spec: "Spec",
    out: str | os.PathLike[str],
    *,
    mode: str = "resume",
    max_concurrent: int | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
    cpu_fallback: bool = False,
    replace: bool = False,
    lock: bool = True,
) -> SweepSummary:
    """Run ``spec``'s trials that need running on the connected Ray; write all results.

    ``cpu_fallback``: when the cluster has no GPU at all, drop the spec's ``num_gpus``
    and train on CPU (right for the embedded local Ray; a cluster may be waiting for
    its autoscaler to add GPU nodes, so there the request stands).
    ``replace``: results of trials not in ``spec`` (another spec's) are moved aside
    to ``<out>/replaced-<stamp>/``; without it they are a ForeignResultsError.
    ``lock``: False where the caller holds ``ResultStore(out).lock()`` already.
    A request no node can satisfy is a ``cluster.ResourcesError`` before anything runs.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("run_sweep needs a connected Ray (ray.init or workbook.sweep.connect)")
    store = ResultStore(out)
    with store.lock() if lock else contextlib.nullcontext():
        check_foreign(spec, store, replace, (stream or sys.stderr).write)
        return _Driver(spec, store, mode, max_concurrent, progress, stream or sys.stderr, cpu_fallback).run()


class ForeignResultsError(CommandError):
    """The sweep folder holds results of trials that are not in the spec (another spec's)."""


def check_foreign(spec: "Spec", store: ResultStore, replace: bool, say: Any = None) -> Path | None:
    """Refuse a folder holding another spec's results, or (``replace``) move them aside; returns where to."""
    foreign = store.foreign_ids(mixed_sweep.spec_trial_ids(spec, store))
    if not foreign:
        return None
    if not replace:
        raise ForeignResultsError(
            f"{store.root} holds results of {len(foreign)} trials that are not in spec {spec.name} (another spec's results)",
            where=str(store.root),
            fix="give another --out, or --force to move them aside into a replaced-<date> folder there and run here",
        )
    dest = store.set_aside(foreign)
    if say is not None:
        say(f"moved {len(foreign)} results of another spec, with its spec.yaml, sweep.json and results.parquet, to {dest}\n")
    return dest


class _Driver:
    def __init__(self, spec: "Spec", store: ResultStore, mode: str, max_concurrent: int | None,
                 progress: bool, stream: TextIO, cpu_fallback: bool) -> None:  # fmt: skip
        self.spec, self.store, self.mode = spec, store, mode
        self.limit = max_concurrent or math.inf
        self.show_progress, self.cpu_fallback = progress, cpu_fallback
        self.out = Progress(stream)
        self.by_id = {t.trial_id: t for t in spec.trials}
        self.flight = Flight()
        self.key: dict[str, str] = {}  # trial id -> fp32 key, for the trials to run
        self.left: dict[str, int] = {}  # fp32 key -> its trials not yet recorded
        self.payload: dict[str, Any] = {}  # fp32 key -> ObjectRef of its FP32 model, while trials need it
        self.source_ended: set[str] = set()
        self.dead: dict[str, str] = {}  # fp32 key -> how its source timed out
        self.here: str | None = None
        self.client = cluster.client_mode()
        self.n_ok = self.n_failed = 0
        self.unsaved: dict[str, str] = {}  # trial id -> why its results could not be written
        self.write_errors: list[str] = []
        self.last_wait_note = 0.0
        self.last_wait_text = ""
        self.mixed = mixed_sweep.MixedRun(spec, store, mode)
        self.plan_jobs: dict[Any, mixed_sweep.PlanItem] = {}  # ref -> the plan it runs
        self._pending: list[Any] = []  # the queue _loop works through (a plan that ends appends its trials)

    def run(self) -> SweepSummary:
        t0 = time.time()
        # The trials of plans stored by an earlier run are the spec's from the start; a plan
        # that runs now adds its trials when it ends (_plan_done).
        self._add_trials(self.mixed.known_trials())
        spec, store = self.spec, self.store
        to_run, done, left = plan(spec, store, self.mode)
        self._reprice(done)
        summary = SweepSummary(out=store.root, total=len(spec.trials), done_before=len(done), left_out=len(left))
        num_gpus = cluster.gpu_request(spec.resources.num_gpus, self.cpu_fallback, self.out.echo)
        if any(t.valid for t in to_run) or self.mixed.to_run:  # before anything is written or submitted
            # A Ray this command started has no autoscaler: waiting there would be forever.
            cluster.check_demand(spec.resources.demand(num_gpus), self.out.echo, autoscaler=False if self.cpu_fallback else None)
        store.root.mkdir(parents=True, exist_ok=True)
        for stale in store.root.glob(f"{STAGING_PREFIX}*"):  # a killed sweep's half-staged trial: never a result
            shutil.rmtree(stale, ignore_errors=True)
        write_text(store.root / "spec.yaml", spec.text or json.dumps({"name": spec.name}) + "\n")
        run_info = {"started_at": iso(t0), "mode": self.mode, **cluster.describe(), "num_gpus_per_trial": num_gpus, "to_run": len(to_run)}
        write_manifest(spec, store, run_info)
        self.out.echo(header_line(spec, store, len(done), len(to_run), len(left), num_gpus))
        for t in spec.invalid_trials:
            if t in to_run:
                self.out.echo(f"invalid trial {t.label} [{t.trial_id}]: {t.error} - recorded failed")
        for item in self.mixed.to_run:
            self.out.echo(self.mixed.announce(item))
        self.out.start(len(to_run), self.show_progress)
        try:
            for t in to_run:
                if not t.valid:
                    self._finish_invalid(t)
            pending: list[Any] = [*self.mixed.to_run, *(t for t in to_run if t.valid)]
            if pending:
                self._loop(pending, num_gpus)
        except KeyboardInterrupt:
            # The trials in flight are not cancelled one by one: ray.shutdown() (the caller's)
            # ends a local cluster's workers, and a cluster drops the tasks of a driver that
            # left. Force-cancelling them raced with their replies in flight and could abort
            # the driver inside Ray's core worker ("Tried to complete task that was not pending").
            summary.interrupted = True
            for _ref, job in self.flight:
                if job.trial_id is not None:  # a worker killed mid-trial cannot remove its own live log
                    with contextlib.suppress(OSError):
                        self._live_log(job.trial_id).unlink(missing_ok=True)
            self.out.echo("interrupted: finished trials are saved; run the same command again to resume")
        finally:
            self.out.close()
            self._guard("results.parquet", lambda: store.rebuild_parquet([t.trial_id for t in self.spec.trials]))
        spec = self.spec  # with the trials its plans added
        summary.total = len(spec.trials)
        summary.ran = self.n_ok + self.n_failed
        summary.count(spec, store)
        summary.unsaved = dict(self.unsaved)
        summary.write_errors = list(self.write_errors)
        summary.wall_s = round(time.time() - t0, 3)
        self._guard("sweep.json", lambda: write_manifest(spec, store, {**run_info, "finished_at": iso(time.time()), **summary.figures()}))
        summary.write_errors = list(self.write_errors)
        print_summary(spec, store, summary)
        return summary

    def _reprice(self, done: Sequence["Trial"]) -> None:
        """Trials kept from an earlier run, priced again where the spec now prices them otherwise."""
        ids: list[str] = []
        self._guard("the costs of stored trials", lambda: ids.extend(self.mixed.reprice(done)))
        if ids:
            self.out.echo(f"priced again on the spec's hardware (its trained models kept): {len(ids)} trials ({', '.join(ids)})")

    def _guard(self, what: str, write: Any) -> None:
        """A summary file the disk refuses: said and counted, never a crash that strands the rest."""
        try:
            write()
        except OSError as e:
            msg = f"cannot write {what} in {self.store.root}: {e.strerror or e}"
            self.write_errors.append(msg)
            self.out.echo(f"error: {msg}; the trials' own results are kept, a rerun rewrites it")

    def _loop(self, pending: list["Trial"], num_gpus: float) -> None:
        import ray

        from workbook.sweep.fp32 import fp32_key

        opts = self.spec.resources.ray_options(num_gpus)
        demand = self.spec.resources.demand(num_gpus)
        with contextlib.suppress(Exception):
            self.here = ray.get_runtime_context().get_node_id()
        self._pending = pending
        for t in pending:
            self.key[t.trial_id] = k = fp32_key(t.config)
            self.left[k] = self.left.get(k, 0) + 1
        capacity, last_capacity = cluster.capacity(demand), time.time()
        last_parquet = time.time()
        while pending or len(self.flight):
            self._submit_some(pending, opts)
            self.flight.infer_running(capacity, time.time())
            self.out.status(self.n_ok, self.n_failed, self.flight.counts())
            if not len(self.flight):
                continue
            ready, _ = ray.wait(self.flight.refs(), num_returns=1, timeout=1.0)
            for ref in ready:
                job = self.flight.pop(ref)
                if job.source:
                    self.source_ended.add(job.key)
                    self.flight.fp32_done(job.key, time.time())
                if job.kind == TRIAL:
                    self._collect(ref, job)
                elif job.kind == PLAN:
                    self._collect_plan(ref)
            self._check_timeouts()
            now = time.time()
            if now - last_capacity > 5:
                capacity, last_capacity = cluster.capacity(demand), now
            if ready and now - last_parquet > 30:  # long sweeps: a fresh table now and then
                self._guard("results.parquet", lambda: self.store.rebuild_parquet([t.trial_id for t in self.spec.trials]))
                last_parquet = now
            if not ready:
                self._note_waiting(demand, now)

    def _note_waiting(self, demand: Mapping[str, float], now: float) -> None:
        """A busy cluster: say what queued trials wait for when that changes. The same
        line again only every ten minutes: a laptop with more trials than cores is
        always "busy", and a line a minute would bury the trials' own results."""
        counts = self.flight.counts()
        if not counts["queued"] or now - self.last_wait_note < 60:
            return
        import ray

        waited = now - min(j.submitted for j in self.flight.jobs.values())
        if waited < 30:
            return
        free, total = ray.available_resources(), ray.cluster_resources()
        if cluster.fits(demand, free):
            return  # a slot is free: Ray is about to start one
        note = (f"waiting: {counts['queued']} trials queued for {cluster.waiting_for(demand, free, total)}; "
                f"{counts['running']} running")  # fmt: skip
        if note == self.last_wait_text and now - self.last_wait_note < 600:
            return
        self.last_wait_note, self.last_wait_text = now, note
        self.out.echo(note)

    def _submit_some(self, pending: list["Trial"], opts: Mapping[str, Any]) -> None:
        """Submit in spec order while under --max-concurrent; a group's source goes first."""
        while pending and len(self.flight) < self.limit:
            t = pending[0]
            k = self.key[t.trial_id]
            if k in self.dead:  # its source timed out: running it again would only time out again
                pending.pop(0)
                self._timed_out(t, f"not run: its FP32 source {self.dead[k]}", submitted=None)
                continue
            if self.left[k] == 1 and k not in self.payload:  # alone in its group: nothing to share
                pending.pop(0)
                self._submit(t, k, opts, "alone")
                continue
            if k not in self.payload:
                # The group's fp32 trial pretrains anyway: it is the source when it runs now.
                src = next((s for s in pending if self.key[s.trial_id] == k and s.config.get("method") == "fp32"), None)
                if src is not None:
                    pending.remove(src)
                    self._submit(src, k, opts, "source")
                else:
                    meta = {"num_cpus": self.spec.resources.num_cpus, "label": t.label}
                    task = remote(FP32).options(**opts, num_returns=2, name=f"qatlab-fp32-{k}")
                    summary_ref, self.payload[k] = task.remote(dict(t.config), meta)
                    self.flight.add(summary_ref, FP32, k, None, time.time(), runnable=True, source=True)
                continue  # the limit is checked again before the next task
            pending.pop(0)
            self._submit(t, k, opts, "dependent")

    def _submit(self, t: "Trial", k: str, opts: Mapping[str, Any], role: str) -> None:
        """``role``: source (hands on its FP32 model), dependent (takes it), alone (neither)."""
        now = time.time()
        if isinstance(t, mixed_sweep.PlanItem):
            self._submit_plan(t, k, opts, role, now)
            return
        meta = {
            "sweep": self.spec.name, "label": t.label, "origin": t.origin, "num_cpus": self.spec.resources.num_cpus,
            "save_models": self.spec.save_models, "submitted_at": now,
            "live_log": None if self.client else {"node_id": self.here, "path": str(self._live_log(t.trial_id).resolve())},
        }  # fmt: skip
        args: list[Any] = [dict(t.config), t.trial_id, meta] + ([self.payload[k]] if role == "dependent" else [])
        name = f"qatlab-trial-{t.trial_id}"
        if role == "source":
            ref, self.payload[k] = remote("source").options(**opts, num_returns=2, name=name).remote(*args)
        elif self.mixed.costed(t):  # priced on the simulators after training
            args[2] = {**meta, **self.mixed.meta(t)}
            ref = mixed_sweep.remote("costed").options(**opts, name=name).remote(*args)
        else:
            ref = remote("trial").options(**opts, name=name).remote(*args)
        runnable = role != "dependent" or k in self.source_ended
        self.flight.add(ref, TRIAL, k, t.trial_id, now, runnable=runnable, source=role == "source")

    def _live_log(self, trial_id: str) -> Path:
        return self.store.trial_dir(trial_id) / "trial.log.running"

    def _check_timeouts(self) -> None:
        timeout = self.spec.resources.timeout_s
        if not timeout:
            return
        import ray

        for ref, job in self.flight.overdue(timeout, time.time()):
            if ref not in self.flight.jobs:  # went with its source below
                continue
            what = {FP32: "FP32 pretraining still running", PLAN: "planning still running"}.get(job.kind, "still running")
            error = f"timed out: {what} after {timeout:g} s (resources.timeout_s); cancelled"
            doomed = [(ref, job)] + (self.flight.waiting_on(job.key) if job.source else [])
            if job.source:
                self.dead[job.key] = error
            for r, j in doomed:
                with contextlib.suppress(Exception):
                    ray.cancel(r, force=True)
                self.flight.pop(r)
                if j.kind == PLAN:
                    item = self.plan_jobs.pop(r)
                    self._plan_done(item, mixed_sweep.failed_plan(item.plan, error if j is job else f"not run: its FP32 source {error}"))
                elif j.trial_id is not None:
                    self._timed_out(self.by_id[j.trial_id], error if j is job else f"not run: its FP32 source {error}", j.submitted)

    def _timed_out(self, t: "Trial", error: str, submitted: float | None) -> None:
        if isinstance(t, mixed_sweep.PlanItem):
            self._plan_done(t, mixed_sweep.failed_plan(t.plan, error))
            return
        self._finish(t, driver_failure(t, self.spec.name, error, "timeout", attempts=None, submitted=submitted), error + "\n", {})

    # ---- mixed-precision plans (workbook.sweep.mixed) ----

    def _add_trials(self, trials: list["Trial"]) -> None:
        """Trials a plan added become the spec's: counted, recorded, in results.parquet."""
        if trials:
            self.spec = dataclasses.replace(self.spec, trials=(*self.spec.trials, *trials))
            self.by_id.update((t.trial_id, t) for t in trials)

    def _finish_invalid(self, t: "Trial") -> None:
        if t.origin == mixed_sweep.ORIGIN:
            self._finish(t, self.mixed.failure(t, self.spec.name), log=f"not run: {t.error}\n", artifacts={})
        else:
            self._finish(t, config_failure(t, self.spec.name), log=f"not run: impossible config: {t.error}\n", artifacts={})

    def _submit_plan(self, item: "mixed_sweep.PlanItem", k: str, opts: Mapping[str, Any], role: str, now: float) -> None:
        assert self.spec.mixed is not None
        p = item.plan
        meta = {"num_cpus": self.spec.resources.num_cpus, "label": p.label, "base_id": p.base_id}
        args: list[Any] = [dict(p.base), p.plan_id, self.spec.mixed.settings(), meta] + ([self.payload[k]] if role == "dependent" else [])
        # the plan runs on CPU (qatlab.mixed.plan): a GPU share would sit idle
        ref = mixed_sweep.remote("plan").options(**{**opts, "num_gpus": 0}, name=f"qatlab-plan-{p.plan_id}").remote(*args)
        self.plan_jobs[ref] = item
        self.flight.add(ref, PLAN, k, None, now, runnable=role != "dependent" or k in self.source_ended)

    def _collect_plan(self, ref: Any) -> None:
        import ray

        item = self.plan_jobs.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as e:  # a worker or node died, or it was cancelled
            result = mixed_sweep.failed_plan(item.plan, f"{type(e).__name__}: {e}")
        self._plan_done(item, result)

    def _plan_done(self, item: "mixed_sweep.PlanItem", result: Mapping[str, Any]) -> None:
        """Store the plan, record its budgets without a configuration, queue its trials."""
        self._guard(f"the plan {item.plan.plan_id}", lambda: mixed_sweep.save_plan(self.store, result))
        k = self.key[item.trial_id]
        trials = [t for t in self.mixed.trials(item.plan, result) if t.trial_id not in self.by_id]
        self._add_trials(trials)
        run = [t for t in trials if self.mode == "force" or self.store.status(t.trial_id) != "ok"]
        self._reprice([t for t in trials if t not in run])
        n_ok = sum(1 for t in trials if t.valid)
        self.out.echo(f"plan {item.label} [{item.plan.plan_id}] {result.get('status')}: {n_ok} configurations"
                      + (f", {len(trials) - n_ok} budgets without one" if len(trials) > n_ok else "")
                      + (f" ({mixed_sweep.first_error(result.get('error'))})" if result.get("status") != "ok" else ""))  # fmt: skip
        if self.out.bar is not None:
            self.out.bar.total += len(run)
            self.out.bar.refresh()
        for t in run:
            if t.valid:
                self.key[t.trial_id] = k
                self.left[k] += 1
                self._pending.append(t)
        self.left[k] -= 1  # the plan itself
        if not self.left[k]:
            self.payload.pop(k, None)
        for t in run:
            if not t.valid:
                self._finish_invalid(t)

    def _collect(self, ref: Any, job: Job) -> None:
        import ray

        t = self.by_id[str(job.trial_id)]
        try:
            out = ray.get(ref)
        except ray.exceptions.TaskCancelledError as e:
            kind, error, attempts = "cancelled", f"cancelled: {e}", None
        except ray.exceptions.RayTaskError as e:  # the runner itself raised: a bug, not retried
            kind, error, attempts = "runner", str(e), 1
        except ray.exceptions.RayError as e:  # a worker, node or raylet died (its own task's or its source's)
            kind, attempts = "infra", self._attempts_seen(t.trial_id, job)
            error = f"infrastructure failure {infra_attempts_text(attempts, self.spec.resources.max_retries)}: {type(e).__name__}: {e}"
        else:
            rec = out["record"]
            rec["submitted_at"] = iso(job.submitted)
            rec["roundtrip_s"] = round(time.time() - job.submitted, 3)
            self._finish(t, rec, log=out.get("log"), artifacts=out.get("artifacts") or {})
            return
        rec = driver_failure(t, self.spec.name, error, kind, attempts=attempts, submitted=job.submitted)
        self._finish(t, rec, log=error + "\n", artifacts={})

    def _attempts_seen(self, trial_id: str, job: Job) -> int | None:
        """How many times the task started, as far as this driver saw: None when it cannot know.

        A trial that was waiting for its FP32 source never started (0). Otherwise each
        attempt rewrites the live log's first line (``..., attempt N``) when its worker
        shares the driver's node; a worker elsewhere leaves no trace here.
        """
        if job.runnable_since is None:
            return 0
        return attempt_in_log(self._live_log(trial_id))

    def _finish(self, t: "Trial", rec: dict[str, Any], log: str | None, artifacts: Mapping[str, bytes]) -> None:
        try:
            self.store.save(rec, log=log, artifacts=artifacts)
        except OSError as e:
            rec = self._unsaved(t, rec, e)
        with contextlib.suppress(OSError):
            self._live_log(t.trial_id).unlink(missing_ok=True)  # left behind by a worker that died
        k = self.key.get(t.trial_id)
        if k is not None:
            self.left[k] -= 1
            if not self.left[k]:  # Ray frees the FP32 model once no task holds its ref
                self.payload.pop(k, None)
        if rec.get("status") == "ok":
            self.n_ok += 1
        else:
            self.n_failed += 1
        self.out.echo(outcome_line(t, rec, self.store.log_path(t.trial_id)))
        self.out.status(self.n_ok, self.n_failed, self.flight.counts())
        self.out.advance()

    def _unsaved(self, t: "Trial", rec: Mapping[str, Any], e: OSError) -> dict[str, Any]:
        """Results the disk refused (full, read-only): the trial is failed, with the reason, and the rerun runs it."""
        reason = f"cannot write the trial's results to {self.store.trial_dir(t.trial_id)}: {e.strerror or e}"
        failed = driver_failure(t, self.spec.name, f"the trial ended {rec.get('status')}, but {reason}", "disk",
                                attempts=rec.get("attempts"), submitted=None)  # fmt: skip
        if not self.store.save_failure(failed):
            self.unsaved[t.trial_id] = reason
        return failed


_ATTEMPT = re.compile(r", attempt (\d+)\s*$")


def attempt_in_log(path: Path) -> int | None:
    """The attempt number in a live trial log's first line, or None without a readable one."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:
        return None
    m = _ATTEMPT.search(first)
    return int(m.group(1)) if m else None


def infra_attempts_text(attempts: int | None, max_retries: int) -> str:
    """The count an infrastructure failure's message gives: the same one its record's ``attempts`` holds."""
    allowed = "unlimited retries" if max_retries < 0 else f"up to {max_retries} retries"
    if attempts is None:
        return f"(attempts made unknown here; resources.max_retries allows {allowed})"
    if attempts == 0:
        return "before the trial started"
    return f"after {attempts} attempt{'s' if attempts != 1 else ''} (resources.max_retries allows {allowed})"
