"""The ``workbook sweep`` command: its arguments, joining or starting Ray, ``--dry-run``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbook.argtypes import int_at_least
from workbook.errors import CommandError
from workbook.results import ResultStore, SweepLockedError
from workbook.sweep.plan import fmt_resources, plan

if TYPE_CHECKING:
    from workbook.spec import Spec

positive_int = int_at_least(1)


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
    p.add_argument(
        "--dry-run", action="store_true", help="validate the spec, list its trials and what would run; start nothing, write nothing"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse a spec in which any trial has an impossible value (default: record it failed, run the rest)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar: one line per finished trial only")


def run(args: argparse.Namespace) -> int:
    from workbook.spec import SpecError, load_spec
    from workbook.sweep.driver import run_sweep

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
          f"resources {fmt_resources(spec)}")  # fmt: skip
    for t in spec.trials:
        state = "run " if t.trial_id in run_ids else "done" if t in done else "skip"
        bad = f"  INVALID: {t.error}" if t.error else ""
        print(f"  {state} {t.trial_id}  {t.label}  [{t.origin}]{bad}")
    print(f"would run {len(to_run)} of {len(spec.trials)} into {store.root} (mode {mode}); nothing started, nothing written")
    return 0
