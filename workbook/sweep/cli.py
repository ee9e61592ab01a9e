"""The ``workbook sweep`` command: its arguments, joining or starting Ray, ``--dry-run``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from workbook.argtypes import int_at_least
from workbook.errors import CommandError
from workbook.results import ResultStore, SweepLockedError
from workbook.sweep.driver import check_foreign
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
    again.add_argument(
        "--force", action="store_true",
        help="run every trial again, even those with an 'ok' result; results of another spec in --out are moved "
        "aside into --out/replaced-<date>/ (without --force such a folder is refused)",
    )  # fmt: skip
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
    ensure_out_dir(out)
    if not args.force:  # refused before Ray starts; run_sweep checks again under the lock
        check_foreign(spec, store, replace=False)

    # Ctrl-C while Ray starts: connect() stops what it started; nothing was written yet.
    with ray_session(args.address, out) as started_local:
        try:
            summary = run_sweep(
                spec,
                out,
                mode=mode,
                max_concurrent=args.max_concurrent,
                progress=not getattr(args, "no_progress", False),
                cpu_fallback=started_local,
                replace=bool(args.force),
            )
        except SweepLockedError as e:
            raise CommandError(str(e)) from None
    return summary.exit_code


@contextlib.contextmanager
def ray_session(address: str | None, out: Path) -> Iterator[bool]:
    """Ray joined or started (:func:`connect`) for one sweep into ``out``; yields whether
    it was started here. Ray is shut down after, if connected here, and a file the disk
    refused becomes :func:`disk_error`'s one line."""
    started_local, connected = connect(address)
    try:
        yield started_local
    except OSError as e:
        if not is_disk_error(e):
            raise
        raise disk_error(e, out) from None
    finally:
        if connected:
            import ray

            ray.shutdown()


_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO, errno.ENOTDIR, errno.EISDIR}


def is_disk_error(e: OSError) -> bool:
    """A file the disk refused (not a network OSError such as a lost Ray connection)."""
    return e.errno in _DISK_ERRNOS or (e.filename is not None and not isinstance(e, ConnectionError))


def disk_error(e: OSError, where: Path) -> CommandError:
    """An OSError the disk raised outside a trial's results (those are recorded failed): one line, exit 1."""
    return CommandError(f"cannot write {e.filename or where}: {e.strerror or e}", where=str(where),
                        fix="free space or choose another --out; finished results are kept and a rerun resumes", code=1)  # fmt: skip


def ensure_out_dir(path: Path, option: str = "--out") -> None:
    """Create ``path`` (and its parents) and prove it writable, or a CommandError naming it.

    A file where a folder is wanted, a parent that is a file, a read-only or full
    disk: each is one line before anything starts, not a traceback half way through.
    """
    if path.exists() and not path.is_dir():
        raise CommandError(f"{path} is a file, not a folder", where=option, fix="give a folder (it is created when missing)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CommandError(f"{parent} is a file, not a folder", where=option, fix="give a path inside a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CommandError(f"cannot write in {path}: {e.strerror or e}", where=option, fix="choose a folder you can write") from None


def _probe(address: str, where: str, timeout_s: float = 5.0) -> None:
    """Fail fast where nothing listens at a HOST:PORT or ray://HOST:PORT address (ray.init would wait minutes)."""
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # "auto", or a form Ray resolves itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise CommandError(
            f"cannot join the Ray cluster at {address}: nothing answers on {host}:{port} ({e.strerror or type(e).__name__})",
            where=where,
            fix="start the cluster (ray start --head) or correct the address",
        ) from None


def connect(address: str | None) -> tuple[bool, bool]:
    """Join ``address`` / $RAY_ADDRESS, or start a local Ray (the embedded default).

    Returns (started_local, connected_here). An already initialised Ray (a notebook, a
    test, ``ray job submit``'s driver) is used as it is.
    """
    import ray

    if ray.is_initialized():
        return False, False
    addr = address or os.environ.get("RAY_ADDRESS") or None
    if addr:
        _probe(addr, "--address" if address else "$RAY_ADDRESS")
    # Worker output goes to each trial's log file, not to this terminal (it would
    # tear the progress bar); Ray's own INFO chatter is left out for the same reason.
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    # Ray announces that it enabled token auth for a local cluster on every start: news
    # to nobody running a sweep, so it stays out of the run's output.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
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
    except KeyboardInterrupt:  # Ctrl-C while Ray starts: stop the processes it started so far
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise
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
    from workbook.sweep.mixed import MixedRun, spec_trial_ids

    if spec.mixed is not None:
        mixed = MixedRun(spec, store, mode)
        for item in mixed.to_run:
            print(f"  plan {item.plan.plan_id}  {item.label}  [mixed: {len(spec.mixed.budgets)} budgets of {spec.mixed.metric}; "
                  "its trials are added once planned]")  # fmt: skip
        for t in mixed.known_trials():  # from plans an earlier run stored
            state = "done" if store.status(t.trial_id) == "ok" and mode != "force" else "run "
            print(f"  {state} {t.trial_id}  {t.label}  [{t.origin}]" + (f"  NO CONFIGURATION: {t.error}" if t.error else ""))
    foreign = store.foreign_ids(spec_trial_ids(spec, store))
    if foreign:
        print(f"{store.root} holds results of {len(foreign)} trials not in this spec: refused without --force; "
              "with --force they are moved aside into a replaced-<date> folder there")  # fmt: skip
    print(f"would run {len(to_run)} of {len(spec.trials)} into {store.root} (mode {mode}); nothing started, nothing written")
    return 0
