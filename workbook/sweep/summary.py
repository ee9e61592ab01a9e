"""The sweep's outcome: its summary (and exit code), ``sweep.json`` and the closing lines."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from workbook.results import ResultStore, write_json_atomic
from workbook.sweep.plan import fmt_resources
from workbook.sweep.records import last_line

if TYPE_CHECKING:
    from workbook.spec import Spec


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
    # trial id -> why the disk refused its results (not even a failed record could be written)
    unsaved: dict[str, str] = dataclasses.field(default_factory=dict)
    write_errors: list[str] = dataclasses.field(default_factory=list)  # results.parquet / sweep.json the disk refused

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed or self.unsaved or self.write_errors else 0

    def figures(self) -> dict[str, Any]:
        """What ``sweep.json`` keeps of this run."""
        return {k: getattr(self, k) for k in ("wall_s", "ran", "ok", "failed", "missing", "interrupted", "unsaved", "write_errors")}

    def count(self, spec: "Spec", store: ResultStore) -> None:
        """ok / failed / missing over every trial of the spec, from the results on disk."""
        for t in spec.trials:
            st = store.status(t.trial_id)
            if st == "ok":
                self.ok += 1
            elif st is None:
                self.missing += 1
            else:
                self.failed += 1
                self.failed_ids.append(t.trial_id)


def write_manifest(spec: "Spec", store: ResultStore, run_info: Mapping[str, Any]) -> None:
    """``sweep.json``: the spec's trials and resources, and this run appended to the last 50."""
    path = store.root / "sweep.json"
    history: list[Any] = []
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        old = json.loads(path.read_text())
        history = [h for h in old.get("runs", []) if h.get("started_at") != run_info.get("started_at")]
    r = spec.resources
    manifest = {
        "name": spec.name,
        "description": spec.description,
        "spec_path": str(spec.path) if spec.path else None,
        "resources": {
            "num_cpus": r.num_cpus,
            "num_gpus": r.num_gpus,
            "memory": r.memory,
            "custom": dict(r.custom),
            "max_retries": r.max_retries,
            "timeout_s": r.timeout_s,
        },
        "trials": [{"trial_id": t.trial_id, "label": t.label, "origin": t.origin, "error": t.error} for t in spec.trials],
        "runs": (history + [dict(run_info)])[-50:],
    }
    write_json_atomic(path, manifest)


def header_line(spec: "Spec", store: ResultStore, done: int, to_run: int, left: int, num_gpus: float) -> str:
    gpu_note = f" (num_gpus {num_gpus:g} here: no GPU in this Ray)" if num_gpus != spec.resources.num_gpus else ""
    return (
        f"sweep {spec.name}: {len(spec.trials)} trials; {done} already ok, running {to_run}"
        + (f", {left} never run left out (--rerun-failed)" if left else "")
        + f"; per trial {fmt_resources(spec)}{gpu_note}; out {store.root}"
    )


def print_summary(spec: "Spec", store: ResultStore, s: SweepSummary) -> None:
    line = (
        f"sweep {spec.name}: {s.total} trials: {s.ok} ok, {s.failed} failed"
        + (f", {s.missing} without result" if s.missing else "")
        + (f", {len(s.unsaved)} not saved" if s.unsaved else "")
        + f" (ran {s.ran} now, {s.done_before} were done) in {s.wall_s:.1f} s"
    )
    print(line, flush=True)
    for tid in s.failed_ids:
        rec = store.load(tid) or {}
        print(f"  FAILED {rec.get('label', tid)} [{tid}]: {last_line(rec.get('error'))}  log: {store.log_path(tid)}")
    for tid, why in s.unsaved.items():
        print(f"  NOT SAVED [{tid}]: {why}; a rerun runs it again")
    for msg in s.write_errors:
        print(f"  NOT WRITTEN: {msg}")
    print(f"results: {store.parquet_path} (+ one JSON and log per trial under {store.trials_dir})", flush=True)
