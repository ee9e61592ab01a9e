"""The shapes of the records the driver writes for trials that produced none themselves."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from workbook.spec import Trial


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")


def last_line(text: Any) -> str:
    lines = [ln.strip() for ln in str(text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def base_record(t: "Trial", sweep: str) -> dict[str, Any]:
    """A failed trial's record: its config, ids and empty metrics (the parquet's columns stay typed)."""
    rec: dict[str, Any] = dict(t.config)
    rec.update(
        trial_id=t.trial_id, status="failed", error=None, test_acc=None, fp32_acc=None, train_s=0.0,
        sweep=sweep, label=t.label, origin=t.origin,
    )  # fmt: skip
    return rec


def config_failure(t: "Trial", sweep: str) -> dict[str, Any]:
    """An impossible config: never submitted."""
    rec = base_record(t, sweep)
    rec.update(error=f"ConfigError: {t.error}", failure="config", attempts=0, finished_at=iso(time.time()))
    return rec


def plan_failure(t: "Trial", sweep: str, error: str) -> dict[str, Any]:
    """A mixed-precision budget without a configuration (its plan failed, or nothing meets it): never submitted."""
    rec = base_record(t, sweep)
    rec.update(error=error, failure="plan", attempts=0, finished_at=iso(time.time()))
    return rec


def driver_failure(t: "Trial", sweep: str, error: str, kind: str, *, attempts: int | None, submitted: float | None) -> dict[str, Any]:
    """A trial whose task returned no record: ``kind`` says why (infra, timeout, cancelled, runner, fp32, disk).

    ``attempts`` is how many times the driver saw the task start (0: never started),
    None where it cannot know; the error text gives the same count.
    """
    now = time.time()
    rec = base_record(t, sweep)
    rec.update(
        error=error, failure=kind, attempts=attempts, node_id=None, node_ip=None, worker_pid=None,
        submitted_at=iso(submitted if submitted is not None else now), finished_at=iso(now),
    )  # fmt: skip
    return rec


def outcome_line(t: "Trial", rec: Mapping[str, Any], log_path: Path) -> str:
    """The one line printed when a trial is recorded."""
    if rec.get("status") != "ok":
        return f"FAILED {t.label} [{t.trial_id}] {last_line(rec.get('error'))} (log: {log_path})"
    acc = rec.get("test_acc")
    detail = f"test_acc={acc:.4f}" if isinstance(acc, float) else ""
    detail += f" {rec.get('train_s') or 0:.1f}s on {rec.get('node_ip')}"
    if rec.get("gpu_ids"):
        detail += f" gpu {','.join(rec['gpu_ids'])} ({rec.get('device')})"
    if (rec.get("attempts") or 1) > 1:
        detail += f" after {rec['attempts']} attempts"
    return f"ok     {t.label} [{t.trial_id}] {detail}"
