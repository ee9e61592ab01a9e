"""What a task learns about the worker it runs on, and how it captures its output."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any, Iterator, TextIO


def worker_info() -> dict[str, Any]:
    """Node, host, pid, Ray's GPU ids and attempt: the columns that say where a trial ran."""
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


def attempt() -> int:
    """Which start of this task this is (1 = first): Ray counts retries of a task, so the driver need not.

    Ray exposes the count only on its core worker; outside a task (or should that
    accessor go away) this is 1, which under-counts retries but never fails a trial.
    """
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            from ray._private.worker import global_worker

            return int(global_worker.core_worker.get_current_task_attempt_number()) + 1
    return 1


def pick_device(requested: str, gpu_ids: list[str], cuda: bool) -> str:
    """CUDA only when Ray assigned this task a GPU *and* CUDA works here (Ray may declare GPUs that do not exist)."""
    if requested != "auto":
        return requested
    return "cuda" if (gpu_ids and cuda) else "cpu"


@contextlib.contextmanager
def captured(fh: TextIO) -> Iterator[None]:
    """Send stdout, stderr and INFO-level logging to ``fh`` for the duration."""
    root = logging.getLogger()
    handler = logging.StreamHandler(fh)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    try:
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
