"""``workbook sweep SPEC``: run an experiment spec's trials as Ray tasks.

    workbook sweep digits-smoke                       # local Ray, results in runs/digits-smoke
    workbook sweep full --address ray://head:10001    # a cluster (or RAY_ADDRESS)

Every trial is one Ray task that calls the one training function
(``qatlab.train.run_trial``) and returns its record, its log and its checkpoints to
this process, which writes them (``workbook.results``): a cluster needs no shared
filesystem. A rerun into the same directory resumes: trials with an ``ok`` result
are not run again, failed and missing ones are.

Failures: a trial that raises is recorded ``failed`` with its traceback (run_trial
never raises); a worker process or node that dies is Ray's business — the task is
retried up to ``resources.max_retries`` times, then recorded ``failed`` with
``failure: infra``. The command exits 1 when any trial of the spec failed, after all
results are written, 2 for usage errors, 130 when interrupted.

Trials that share FP32 pretraining (same ``fp32_key``) are held back until the first
of them has finished, so the pretraining runs once and the others read the cache.

This module imports neither torch nor Ray at import time (``workbook --help``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TextIO

from workbook.cli import int_at_least
from qatlab.atomic import write_text
from workbook.results import ResultStore, SweepLockedError, write_json_atomic

if TYPE_CHECKING:
    from workbook.spec import Spec, Trial

MODES = ("resume", "failed", "force")
LOG_TAIL_BYTES = 4 << 20  # a trial's log is capped (its tail kept) before it travels back


# ---- CLI ----------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="spec name (workbook/specs/NAME.yaml) or YAML file")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: HOST:PORT, ray://HOST:10001 or 'auto' (default: $RAY_ADDRESS, else start a local Ray)",
    )
    p.add_argument("--out", default=None, help="output directory (default: runs/<spec name>); a rerun into it resumes")
    p.add_argument(
        "--max-concurrent", type=positive_int, default=None, metavar="N",
        help="run at most N trials at once (default: as many as the cluster's resources allow)",
    )  # fmt: skip
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--rerun-failed", action="store_true",
        help="run only the trials whose last result is 'failed' (not the ones never run)",
    )  # fmt: skip
    again.add_argument("--force", action="store_true", help="run every trial again, even those with an 'ok' result")
    p.add_argument("--dry-run", action="store_true", help="validate the spec, list its trials and what would run; start nothing, write nothing")
    p.add_argument("--strict", action="store_true", help="refuse a spec in which any trial has an impossible value (default: record it failed, run the rest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar: one line per finished trial only")


positive_int = int_at_least(1)


def run(args: argparse.Namespace) -> int:
    from workbook.cli import CommandError
    from workbook.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        raise CommandError(str(e)) from None
    if getattr(args, "strict", False) and spec.invalid_trials:
        t = spec.invalid_trials[0]
        more = f" (and {len(spec.invalid_trials) - 1} more)" if len(spec.invalid_trials) > 1 else ""
        raise CommandError(f"{spec.source}: trial {t.label!r}: {t.error}{more}")
    mode = "force" if args.force else "failed" if args.rerun_failed else "resume"
    out = Path(args.out) if args.out else Path("runs") / spec.name
    store = ResultStore(out)
    if getattr(args, "dry_run", False):
        return _dry_run(spec, store, mode)

    try:
        started_local, connected = connect(args.address)
    except KeyboardInterrupt:  # Ctrl-C while Ray starts: nothing was written yet
        print("workbook: interrupted", file=sys.stderr)
        return 130
    try:
        summary = run_sweep(
            spec,
            out,
            mode=mode,
            max_concurrent=args.max_concurrent,
            progress=not getattr(args, "no_progress", False),
            cpu_fallback=started_local,
        )
    except SweepLockedError as e:
        raise CommandError(str(e)) from None
    finally:
        if connected:
            import ray

            ray.shutdown()
    return summary.exit_code


def connect(address: str | None) -> tuple[bool, bool]:
    """Join ``address`` / $RAY_ADDRESS, or start a local Ray (the embedded default).

    Returns (started_local, connected_here). An already initialised Ray (a notebook, a
    test, ``ray job submit``'s driver) is used as it is.
    """
    import ray

    from workbook.cli import CommandError

    if ray.is_initialized():
        return False, False
    addr = address or os.environ.get("RAY_ADDRESS") or None
    # Worker output goes to each trial's log file, not to this terminal (it would
    # tear the progress bar); Ray's own INFO chatter is left out for the same reason.
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if addr:
            ray.init(address=addr, **kw)
            return False, True
        # "local": a new Ray even if another one runs on this machine. No dashboard:
        # nobody watches it, and on a loaded machine Ray's agents can miss the raylet's
        # fixed 15 s start-up wait (ray-project/ray#65983), so such a start is retried.
        for attempt in range(3):
            try:
                ray.init(address="local", include_dashboard=False, **kw)
                return True, True
            except Exception as e:
                ray.shutdown()
                if attempt == 2 or "timed out during startup" not in str(e):
                    raise
        raise AssertionError("unreachable")
    except Exception as e:  # Ray raises bare Exceptions too (a node that fails to start)
        where = addr or "a local Ray"
        raise CommandError(f"cannot start or join {where}: {' '.join(str(e).split())[:300]}") from None


def _dry_run(spec: "Spec", store: ResultStore, mode: str) -> int:
    to_run, done, not_run = plan(spec, store, mode)
    run_ids = {t.trial_id for t in to_run}
    print(f"spec {spec.name} ({spec.source}): {len(spec.trials)} trials ({spec.collapsed} duplicates collapsed), "
          f"resources {_fmt_resources(spec)}")  # fmt: skip
    for t in spec.trials:
        state = "run " if t.trial_id in run_ids else "done" if t in done else "skip"
        bad = f"  INVALID: {t.error}" if t.error else ""
        print(f"  {state} {t.trial_id}  {t.label}  [{t.origin}]{bad}")
    print(f"would run {len(to_run)} of {len(spec.trials)} into {store.root} (mode {mode}); nothing started, nothing written")
    return 0


def _fmt_resources(spec: "Spec") -> str:
    r = spec.resources
    parts = [f"num_cpus={r.num_cpus:g}", f"num_gpus={r.num_gpus:g}"]
    parts += [f"{k}={v:g}" for k, v in r.custom.items()]
    return " ".join(parts)


# ---- planning -----------------------------------------------------------------------


def plan(spec: "Spec", store: ResultStore, mode: str = "resume") -> tuple[list["Trial"], list["Trial"], list["Trial"]]:
    """Split the spec's trials into (to run, done with an ok result, left out).

    ``resume``: run those without a result or with a failed one. ``failed``: only
    those whose result is failed. ``force``: all of them.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    to_run, done, left = [], [], []
    for t in spec.trials:
        status = None if mode == "force" else store.status(t.trial_id)
        if mode == "force":
            to_run.append(t)
        elif status == "ok":
            done.append(t)
        elif mode == "failed" and status is None:
            left.append(t)
        else:
            to_run.append(t)
    return to_run, done, left


# ---- the worker side ----------------------------------------------------------------


def execute_trial(
    config: Mapping[str, Any],
    trial_id: str,
    meta: Mapping[str, Any],
    tracker: Any = None,
) -> dict[str, Any]:
    """Run one trial on this worker; return ``{"record", "log", "artifacts"}``.

    ``meta``: sweep, label, origin, num_cpus, save_models, submitted_at, run_token
    (the sweep's key in the tracker), live_log ({node_id, path}: where the driver can
    read a live log, when this worker is on its node). Picks the device: CUDA only when Ray
    assigned this task a GPU *and* CUDA works here (Ray may declare GPUs that do not
    exist); the logical GPU ids are recorded either way.
    """
    started = time.time()
    info = _worker_info()
    ack = None
    if tracker is not None:
        with contextlib.suppress(Exception):  # progress reporting must never fail a trial
            ack = tracker.started.remote(meta.get("run_token"), trial_id, info["node_id"], info["node_ip"], info["worker_pid"], started)

    import torch

    from qatlab.train import run_trial

    if ack is not None:
        # Wait for the ack (usually there by now): a start lost with a dying worker
        # would under-count attempts.
        with contextlib.suppress(Exception):
            import ray

            ray.get(ack, timeout=10)

    cfg = dict(config)
    cuda = bool(torch.cuda.is_available())
    if cfg.get("device", "auto") == "auto":
        cfg["device"] = "cuda" if (info["gpu_ids"] and cuda) else "cpu"
    # One trial per `num_cpus`: more threads than CPUs asked for would slow neighbours.
    torch.set_num_threads(max(1, int(meta.get("num_cpus") or 1)))

    live = meta.get("live_log") or {}
    log_path: Path | None = None
    if live.get("node_id") and live.get("node_id") == info["node_id"] and live.get("path"):
        try:  # same node as the driver: `tail -f` works while the trial runs
            log_path = Path(live["path"])
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.touch()
        except OSError:  # not the driver's filesystem after all (a container): a temp file
            log_path = None
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix=f"qatlab-trial-{trial_id}-", suffix=".log")
        os.close(fd)
        log_path = Path(tmp)
    artifacts: dict[str, bytes] = {}
    try:
        with open(log_path, "w", encoding="utf-8", buffering=1) as fh:
            record = _run_logged(fh, cfg, trial_id, meta, info, cuda, run_trial, artifacts)
        log = _tail(log_path)
    finally:
        log_path.unlink(missing_ok=True)
    record.update(
        {
            "started_at": _iso(started),
            "finished_at": _iso(time.time()),
            "task_s": round(time.time() - started, 3),
            "queue_s": round(max(0.0, started - float(meta.get("submitted_at", started))), 3),
        }
    )
    return {"record": record, "log": log, "artifacts": artifacts}


def _run_logged(fh: TextIO, cfg: dict[str, Any], trial_id: str, meta: Mapping[str, Any], info: Mapping[str, Any],
                cuda: bool, run_trial: Any, artifacts: dict[str, bytes]) -> dict[str, Any]:  # fmt: skip
    import torch

    def say(msg: str) -> None:
        fh.write(f"{_iso(time.time())} {msg}\n")

    say(f"trial {trial_id}: {meta.get('label')} (sweep {meta.get('sweep')}, {meta.get('origin')})")
    say(f"node {info['node_ip']} ({info['node_id']}), host {info['hostname']}, pid {info['worker_pid']}")
    say(f"ray gpu ids {info['gpu_ids']}, CUDA_VISIBLE_DEVICES={info['cuda_visible_devices']!r}, "
        f"cuda available {cuda} -> device {cfg['device']}; torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    say("config " + json.dumps(cfg, sort_keys=True))
    root = logging.getLogger()
    handler = logging.StreamHandler(fh)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    try:
        with tempfile.TemporaryDirectory(prefix="qatlab-artifacts-") as adir, \
                contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):  # fmt: skip
            cpu0 = time.process_time()
            record = run_trial(cfg, out_dir=adir if meta.get("save_models", True) else None)
            # CPU seconds of this process: cpu_s / train_s far below the threads used
            # means the trial waited for a CPU (an oversubscribed or shared machine).
            record["cpu_s"] = round(time.process_time() - cpu0, 3)
            if record.get("status") == "ok":
                for p in sorted(Path(adir).iterdir()):
                    if p.is_file() and not p.name.startswith("."):
                        artifacts[p.name] = p.read_bytes()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    if record.get("error"):
        fh.write(record["error"].rstrip() + "\n")
    say(f"status {record.get('status')}: test_acc {record.get('test_acc')}, fp32_acc {record.get('fp32_acc')}, "
        f"int_acc {record.get('int_acc')}, {record.get('train_s')} s; artifacts {sorted(artifacts)}")  # fmt: skip
    # run_trial leaves config fields out when the config itself is rejected.
    full = {**cfg, **record}
    if full.get("trial_id") not in (None, trial_id):
        say(f"warning: run_trial computed trial id {full['trial_id']}, the spec {trial_id}")
    full["trial_id"] = trial_id
    full.update({k: meta.get(k) for k in ("sweep", "label", "origin")})
    full["failure"] = None if full.get("status") == "ok" else "trial"
    full.update(info)
    full["cuda_available"] = cuda
    full["torch_version"] = torch.__version__
    return full


def _worker_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "node_id": None,
        "node_ip": None,
        "hostname": socket.gethostname(),
        "worker_pid": os.getpid(),
        "gpu_ids": [],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    try:
        import ray

        if ray.is_initialized():
            info["node_id"] = ray.get_runtime_context().get_node_id()
            info["node_ip"] = ray.util.get_node_ip_address()
            info["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # outside Ray (a direct call): no node, no GPUs assigned
        pass
    return info


def _tail(path: Path) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size > LOG_TAIL_BYTES:
            f.seek(size - LOG_TAIL_BYTES)
            head = f"[log truncated: first {size - LOG_TAIL_BYTES} bytes left out]\n".encode()
            return (head + f.read()).decode("utf-8", "replace")
        return f.read().decode("utf-8", "replace")


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")


class Tracker:
    """A tiny actor the trials tell when they start: exact 'running' counts, attempts, timeouts.

    One per driver process, shared by its sweeps (each has its own ``run``token), so
    a notebook or benchmark running many sweeps starts its process once.
    """

    def __init__(self) -> None:
        self.starts: dict[str, dict[str, list[tuple[Any, ...]]]] = {}

    def started(self, run: str, trial_id: str, node_id: str | None, node_ip: str | None, pid: int, t: float) -> None:
        self.starts.setdefault(run, {}).setdefault(trial_id, []).append((node_id, node_ip, pid, t))

    def snapshot(self, run: str) -> dict[str, list[tuple[Any, ...]]]:
        return self.starts.get(run, {})

    def forget(self, run: str) -> None:
        self.starts.pop(run, None)


_REMOTES: dict[str, Any] = {}
_TRACKERS: dict[str, tuple[Any, Any]] = {}  # "current" -> ((job id, node id), actor handle)


def _remote(name: str) -> Any:
    import ray

    if name not in _REMOTES:
        _REMOTES["task"] = ray.remote(execute_trial)
        _REMOTES["tracker"] = ray.remote(Tracker)
    return _REMOTES[name]


# ---- the driver side ----------------------------------------------------------------


@dataclasses.dataclass
class SweepSummary:
    out: Path
    total: int
    ran: int = 0
    done_before: int = 0
    left_out: int = 0
    ok: int = 0  # over all trials of the spec, after this run
    failed: int = 0
    missing: int = 0
    failed_ids: list[str] = dataclasses.field(default_factory=list)
    interrupted: bool = False
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


def run_sweep(
    spec: "Spec",
    out: str | os.PathLike[str],
    *,
    mode: str = "resume",
    max_concurrent: int | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
    cpu_fallback: bool = False,
) -> SweepSummary:
    """Run ``spec``'s trials that need running on the connected Ray; write all results.

    ``cpu_fallback``: when the cluster has no GPU at all, drop the spec's ``num_gpus``
    and train on CPU (right for the embedded local Ray; a cluster may be waiting for
    its autoscaler to add GPU nodes, so there the request stands).
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("run_sweep needs a connected Ray (ray.init or workbook.sweep.connect)")
    stream = stream or sys.stderr
    store = ResultStore(out)
    with store.lock():
        return _Driver(spec, store, mode, max_concurrent, progress, stream, cpu_fallback).run()


class _Driver:
    def __init__(self, spec: "Spec", store: ResultStore, mode: str, max_concurrent: int | None,
                 progress: bool, stream: TextIO, cpu_fallback: bool) -> None:  # fmt: skip
        self.spec, self.store, self.mode = spec, store, mode
        self.max_concurrent = max_concurrent
        self.progress, self.stream, self.cpu_fallback = progress, stream, cpu_fallback
        self.by_id = {t.trial_id: t for t in spec.trials}
        self.bar: Any = None
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.in_flight: dict[Any, str] = {}  # ObjectRef -> trial id
        self.submitted: dict[str, float] = {}
        # From the tracker actor: trial id -> [(node_id, node_ip, pid, t), ...], one per attempt.
        self.starts: dict[str, list[tuple[Any, ...]]] = {}
        self.tracker: Any = None
        self.snapshot_ref: Any = None
        self.running_since: dict[str, tuple[int, float]] = {}  # trial id -> (attempt, driver time seen)
        self.capacity = math.inf
        self.here: str | None = None
        self.client_mode = _client_mode()
        self.run_token = uuid.uuid4().hex
        self.n_ok = self.n_failed = 0

    def echo(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def run(self) -> SweepSummary:
        import ray

        t0 = time.time()
        spec, store = self.spec, self.store
        to_run, done, left = plan(spec, store, self.mode)
        summary = SweepSummary(out=store.root, total=len(spec.trials), done_before=len(done), left_out=len(left))
        store.root.mkdir(parents=True, exist_ok=True)
        write_text(store.root / "spec.yaml", spec.text or json.dumps({"name": spec.name}) + "\n")
        num_gpus = self._gpu_request()
        run_info = {
            "started_at": _iso(t0),
            "mode": self.mode,
            "ray_address": _ray_address(),
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "cluster_resources": {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")},
            "num_gpus_per_trial": num_gpus,
            "to_run": len(to_run),
        }
        self._write_manifest(run_info)
        gpu_note = f" (num_gpus {num_gpus:g} here: no GPU in this Ray)" if num_gpus != spec.resources.num_gpus else ""
        self.echo(
            f"sweep {spec.name}: {len(spec.trials)} trials; {len(done)} already ok, running {len(to_run)}"
            + (f", {len(left)} never run left out (--rerun-failed)" if left else "")
            + f"; per trial {_fmt_resources(spec)}{gpu_note}; out {store.root}"
        )
        for t in spec.invalid_trials:
            if t in to_run:
                self.echo(f"invalid trial {t.label} [{t.trial_id}]: {t.error} - recorded failed")

        pending = [t for t in to_run if t.valid]
        self.bar = _make_bar(len(to_run), self.progress, self.stream, self.tty)
        try:
            for t in to_run:
                if not t.valid:
                    self._finish(t, self._config_failure(t), log=f"not run: impossible config: {t.error}\n", artifacts={})
            if pending:
                self._loop(pending, done, num_gpus)
        except KeyboardInterrupt:
            summary.interrupted = True
            self._cancel_all()
            self.echo("interrupted: finished trials are saved; run the same command again to resume")
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            if self.tracker is not None:
                with contextlib.suppress(Exception):
                    self.tracker.forget.remote(self.run_token)
            store.rebuild_parquet([t.trial_id for t in spec.trials])

        summary.ran = self.n_ok + self.n_failed
        for t in spec.trials:
            st = store.status(t.trial_id)
            if st == "ok":
                summary.ok += 1
            elif st is None:
                summary.missing += 1
            else:
                summary.failed += 1
                summary.failed_ids.append(t.trial_id)
        summary.wall_s = round(time.time() - t0, 3)
        run_info.update(
            finished_at=_iso(time.time()), wall_s=summary.wall_s, ran=summary.ran, ok=summary.ok,
            failed=summary.failed, missing=summary.missing, interrupted=summary.interrupted,
        )  # fmt: skip
        self._write_manifest(run_info)
        self._print_summary(summary)
        return summary

    def _gpu_request(self) -> float:
        import ray

        want = self.spec.resources.num_gpus
        if want <= 0:
            return 0.0
        if ray.cluster_resources().get("GPU", 0.0) > 0:
            return want
        if self.cpu_fallback:
            self.echo(f"note: the spec asks num_gpus={want:g} per trial but this Ray has no GPU: training on CPU")
            return 0.0
        self.echo(f"warning: the spec asks num_gpus={want:g} per trial and the cluster has no GPU now; "
                  "trials wait until GPU nodes join (autoscaler). Set resources.num_gpus: 0 to train on CPU.")  # fmt: skip
        return want

    def _write_manifest(self, run_info: Mapping[str, Any]) -> None:
        path = self.store.root / "sweep.json"
        history: list[Any] = []
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            old = json.loads(path.read_text())
            history = [h for h in old.get("runs", []) if h.get("started_at") != run_info.get("started_at")]
        r = self.spec.resources
        manifest = {
            "name": self.spec.name,
            "description": self.spec.description,
            "spec_path": str(self.spec.path) if self.spec.path else None,
            "resources": {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus, "memory": r.memory, "custom": dict(r.custom),
                          "max_retries": r.max_retries, "timeout_s": r.timeout_s},  # fmt: skip
            "trials": [{"trial_id": t.trial_id, "label": t.label, "origin": t.origin, "error": t.error} for t in self.spec.trials],
            "runs": (history + [dict(run_info)])[-50:],
        }
        write_json_atomic(path, manifest)

    def _start_tracker(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        try:
            ctx = ray.get_runtime_context()
            self.here = ctx.get_node_id()
            key = (ctx.get_job_id(), self.here)
            cached = _TRACKERS.get("current")
            if cached is not None and cached[0] == key:
                self.tracker = cached[1]
                return
            # On the driver's node (hard: a soft request may land elsewhere): it lives
            # as long as this driver can.
            strategy = NodeAffinitySchedulingStrategy(node_id=self.here, soft=False)
            self.tracker = _remote("tracker").options(num_cpus=0, max_restarts=0, scheduling_strategy=strategy).remote()
            _TRACKERS["current"] = (key, self.tracker)
        except Exception:
            self.tracker = None

    def _loop(self, pending: list["Trial"], done: Sequence["Trial"], num_gpus: float) -> None:
        import ray

        from qatlab.config import TrainConfig

        opts = self.spec.resources.ray_options(num_gpus)
        demand = self.spec.resources.demand(num_gpus)
        task = _remote("task")
        self._start_tracker()

        key = {t.trial_id: TrainConfig.from_dict(dict(t.config)).fp32_key for t in pending}
        # A key is warm once a trial with it has finished: its FP32 model is in the cache.
        warm = {TrainConfig.from_dict(dict(t.config)).fp32_key for t in done if t.valid}
        leaders: dict[str, str] = {}  # fp32_key -> id of the in-flight trial that pretrains it
        preferred: dict[str, "Trial"] = {}
        for t in pending:  # an fp32 trial leads its group: it ends right after pretraining
            k = key[t.trial_id]
            if k not in preferred or (t.config.get("method") == "fp32" and preferred[k].config.get("method") != "fp32"):
                preferred[k] = t
        limit = self.max_concurrent or math.inf
        self.capacity, last_capacity = _capacity(demand), time.time()
        last_parquet = time.time()

        while pending or self.in_flight:
            i = 0
            while i < len(pending) and len(self.in_flight) < limit:
                t = pending[i]
                k = key[t.trial_id]
                if k not in warm:
                    if k in leaders:
                        i += 1  # waits for its leader's FP32 model
                        continue
                    if preferred[k] in pending:
                        t = preferred[k]
                    leaders[k] = t.trial_id
                pending.remove(t)
                self.in_flight[self._submit(task, t, opts)] = t.trial_id
            self._refresh()
            if not self.in_flight:
                continue
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                tid = self.in_flight.pop(ref)
                self._collect(ref, tid)
                if leaders.get(key[tid]) == tid:
                    warm.add(key[tid])
                    del leaders[key[tid]]
            self._check_timeouts()
            now = time.time()
            if now - last_capacity > 5:
                self.capacity, last_capacity = _capacity(demand), now
            if ready and now - last_parquet > 30:  # long sweeps: a fresh table now and then
                self.store.rebuild_parquet([t.trial_id for t in self.spec.trials])
                last_parquet = now

    def _submit(self, task: Any, t: "Trial", opts: Mapping[str, Any]) -> Any:
        now = time.time()
        self.submitted[t.trial_id] = now
        meta = {
            "sweep": self.spec.name,
            "label": t.label,
            "origin": t.origin,
            "num_cpus": self.spec.resources.num_cpus,
            "save_models": self.spec.save_models,
            "submitted_at": now,
            # Ray Client: the driver's files are on another machine than any node.
            "live_log": None if self.client_mode else {"node_id": self.here, "path": str(self._live_log(t.trial_id).resolve())},
        }
        meta["run_token"] = self.run_token
        return task.options(**opts, name=f"qatlab-trial-{t.trial_id}").remote(dict(t.config), t.trial_id, meta, self.tracker)

    def _live_log(self, trial_id: str) -> Path:
        return self.store.trial_dir(trial_id) / "trial.log.running"

    def _refresh(self) -> None:
        import ray

        if self.tracker is not None:
            try:
                if self.snapshot_ref is None:
                    self.snapshot_ref = self.tracker.snapshot.remote(self.run_token)
                ready, _ = ray.wait([self.snapshot_ref], timeout=0)
                if ready:
                    self.starts = ray.get(self.snapshot_ref)
                    self.snapshot_ref = self.tracker.snapshot.remote(self.run_token)
            except Exception:
                self._drop_tracker()  # progress falls back to an estimate from capacity
        now = time.time()
        flying = set(self.in_flight.values())
        for tid in flying:
            n = len(self.starts.get(tid, ()))
            if n and self.running_since.get(tid, (0, 0.0))[0] != n:
                self.running_since[tid] = (n, now)
        self._postfix()

    def _postfix(self) -> None:
        if self.bar is None:
            return
        flying = set(self.in_flight.values())
        if self.tracker is not None:
            running = sum(1 for tid in flying if tid in self.running_since)
        else:
            running = min(len(flying), int(self.capacity) if math.isfinite(self.capacity) else len(flying))
        self.bar.set_postfix_str(f"ok={self.n_ok} failed={self.n_failed} running={running} queued={len(flying) - running}", refresh=False)
        if self.tty:
            self.bar.refresh()

    def _sync_starts(self) -> None:
        """A fresh copy of the tracker's starts (attempt counts of a finished trial)."""
        if self.tracker is None:
            return
        import ray

        try:
            self.starts = ray.get(self.tracker.snapshot.remote(self.run_token), timeout=10)
        except ray.exceptions.GetTimeoutError:
            pass
        except Exception:
            self._drop_tracker()

    def _drop_tracker(self) -> None:
        if _TRACKERS.get("current", (None, None))[1] is self.tracker:
            _TRACKERS.pop("current", None)
        self.tracker = None

    def _check_timeouts(self) -> None:
        timeout = self.spec.resources.timeout_s
        if not timeout:
            return
        import ray

        now = time.time()
        for ref, tid in list(self.in_flight.items()):
            since = self.running_since.get(tid)
            if since is None and self.tracker is None:  # no start reports: count from submission
                since = (0, self.submitted[tid])
            if since is not None and now - since[1] > timeout:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
                self.in_flight.pop(ref)
                rec = self._infra_failure(self.by_id[tid], f"timed out: still running after {timeout:g} s (resources.timeout_s); cancelled", "timeout")
                self._finish(self.by_id[tid], rec, log=rec["error"] + "\n", artifacts={})

    def _cancel_all(self) -> None:
        import ray

        for ref in list(self.in_flight):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    def _collect(self, ref: Any, tid: str) -> None:
        import ray

        t = self.by_id[tid]
        try:
            out = ray.get(ref)
        except ray.exceptions.TaskCancelledError as e:
            rec = self._infra_failure(t, f"cancelled: {e}", "cancelled")
        except ray.exceptions.RayTaskError as e:  # the runner itself raised: a bug, not retried
            rec = self._infra_failure(t, str(e), "runner")
        except ray.exceptions.RayError as e:  # a worker or node died more than max_retries times
            n = self.spec.resources.max_retries
            rec = self._infra_failure(t, f"infrastructure failure after {n} retries: {type(e).__name__}: {e}", "infra")
        else:
            rec = out["record"]
            self._sync_starts()
            rec["attempts"] = max(1, len(self.starts.get(tid, ())))
            rec["submitted_at"] = _iso(self.submitted.get(tid, time.time()))
            rec["roundtrip_s"] = round(time.time() - self.submitted.get(tid, time.time()), 3)
            self._finish(t, rec, log=out.get("log"), artifacts=out.get("artifacts") or {})
            return
        self._finish(t, rec, log=rec["error"] + "\n", artifacts={})

    def _base_record(self, t: "Trial") -> dict[str, Any]:
        rec: dict[str, Any] = dict(t.config)
        rec.update(
            trial_id=t.trial_id, status="failed", error=None, test_acc=None, fp32_acc=None, train_s=0.0,
            sweep=self.spec.name, label=t.label, origin=t.origin,
        )  # fmt: skip
        return rec

    def _config_failure(self, t: "Trial") -> dict[str, Any]:
        rec = self._base_record(t)
        rec.update(error=f"ConfigError: {t.error}", failure="config", attempts=0, finished_at=_iso(time.time()))
        return rec

    def _infra_failure(self, t: "Trial", error: str, kind: str) -> dict[str, Any]:
        self._sync_starts()
        rec = self._base_record(t)
        starts = self.starts.get(t.trial_id, [])
        last = starts[-1] if starts else (None, None, None, None)
        rec.update(
            error=error, failure=kind, attempts=len(starts), node_id=last[0], node_ip=last[1], worker_pid=last[2],
            submitted_at=_iso(self.submitted.get(t.trial_id, time.time())), finished_at=_iso(time.time()),
        )  # fmt: skip
        return rec

    def _finish(self, t: "Trial", rec: dict[str, Any], log: str | None, artifacts: Mapping[str, bytes]) -> None:
        self.store.save(rec, log=log, artifacts=artifacts)
        self._live_log(t.trial_id).unlink(missing_ok=True)  # left behind by a worker that died
        self.running_since.pop(t.trial_id, None)
        if rec.get("status") == "ok":
            self.n_ok += 1
            acc = rec.get("test_acc")
            detail = f"test_acc={acc:.4f}" if isinstance(acc, float) else ""
            detail += f" {rec.get('train_s') or 0:.1f}s on {rec.get('node_ip')}"
            if rec.get("gpu_ids"):
                detail += f" gpu {','.join(rec['gpu_ids'])} ({rec.get('device')})"
            if (rec.get("attempts") or 1) > 1:
                detail += f" after {rec['attempts']} attempts"
            self.echo(f"ok     {t.label} [{t.trial_id}] {detail}")
        else:
            self.n_failed += 1
            self.echo(f"FAILED {t.label} [{t.trial_id}] {_last_line(rec.get('error'))} (log: {self.store.log_path(t.trial_id)})")
        if self.bar is not None:
            self._postfix()
            self.bar.update(1)

    def _print_summary(self, s: SweepSummary) -> None:
        line = (
            f"sweep {self.spec.name}: {s.total} trials: {s.ok} ok, {s.failed} failed"
            + (f", {s.missing} without result" if s.missing else "")
            + f" (ran {s.ran} now, {s.done_before} were done) in {s.wall_s:.1f} s"
        )
        print(line, flush=True)
        for tid in s.failed_ids:
            rec = self.store.load(tid) or {}
            print(f"  FAILED {rec.get('label', tid)} [{tid}]: {_last_line(rec.get('error'))}  log: {self.store.log_path(tid)}")
        print(f"results: {self.store.parquet_path} (+ one JSON and log per trial under {self.store.trials_dir})", flush=True)


def _last_line(text: Any) -> str:
    lines = [ln.strip() for ln in str(text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _make_bar(total: int, enabled: bool, stream: TextIO, tty: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    # Not a terminal (CI logs): redraw rarely, so the log stays readable.
    return tqdm(total=total, unit="trial", file=stream, dynamic_ncols=True, mininterval=0.5 if tty else 10.0,
                smoothing=0.1, desc="trials")  # fmt: skip


def _capacity(demand: Mapping[str, float]) -> float:
    """How many trials of this shape fit on the alive nodes at once (inf: no demand)."""
    import ray

    if not demand:
        return math.inf
    total = 0
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        total += int(min(math.floor(res.get(k, 0.0) / v + 1e-9) for k, v in demand.items()))
    return float(total)


def _client_mode() -> bool:
    with contextlib.suppress(Exception):
        from ray.util.client import ray as client

        return bool(client.is_connected())
    return False


def _ray_address() -> str | None:
    import ray

    with contextlib.suppress(Exception):
        return ray.get_runtime_context().gcs_address
    return None
