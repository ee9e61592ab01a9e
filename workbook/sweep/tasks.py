"""The sweep's Ray remote functions, made once per process (Ray's own cache is per function object)."""

from __future__ import annotations

from typing import Any

_REMOTES: dict[str, Any] = {}


def remote(name: str) -> Any:
    """``trial`` (execute_trial), ``source`` (an fp32 trial that hands on its model) or ``fp32`` (pretraining only)."""
    import ray

    if not _REMOTES:
        from workbook.sweep.fp32 import pretrain
        from workbook.sweep.worker import execute_source_trial, execute_trial

        _REMOTES.update(trial=ray.remote(execute_trial), source=ray.remote(execute_source_trial), fp32=ray.remote(pretrain))
    if name not in _REMOTES:
        raise KeyError(f"no remote function {name!r}; known: {', '.join(sorted(_REMOTES))}")
    return _REMOTES[name]
