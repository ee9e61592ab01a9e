"""Which of a spec's trials run now, given the results already in the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbook.results import ResultStore

if TYPE_CHECKING:
    from workbook.spec import Spec, Trial

MODES = ("resume", "failed", "force")


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


def fmt_resources(spec: "Spec") -> str:
    """The per-trial Ray request, as the header line and ``--dry-run`` show it."""
    r = spec.resources
    parts = [f"num_cpus={r.num_cpus:g}", f"num_gpus={r.num_gpus:g}"]
    parts += [f"{k}={v:g}" for k, v in r.custom.items()]
    return " ".join(parts)
