"""What the connected Ray offers a sweep: its address, capacity and GPUs."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping


def capacity(demand: Mapping[str, float]) -> float:
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


def gpu_request(want: float, cpu_fallback: bool, echo: Callable[[str], None]) -> float:
    """The GPUs per trial to ask for: ``want``, or 0 where a local Ray has none to give."""
    import ray

    if want <= 0:
        return 0.0
    if ray.cluster_resources().get("GPU", 0.0) > 0:
        return want
    if cpu_fallback:
        echo(f"note: the spec asks num_gpus={want:g} per trial but this Ray has no GPU: training on CPU")
        return 0.0
    echo(f"warning: the spec asks num_gpus={want:g} per trial and the cluster has no GPU now; "
         "trials wait until GPU nodes join (autoscaler). Set resources.num_gpus: 0 to train on CPU.")  # fmt: skip
    return want


def client_mode() -> bool:
    """Ray Client: the driver's files are on another machine than any node."""
    with contextlib.suppress(Exception):
        from ray.util.client import ray as client

        return bool(client.is_connected())
    return False


def ray_address() -> str | None:
    import ray

    with contextlib.suppress(Exception):
        return ray.get_runtime_context().gcs_address
    return None


def describe() -> dict[str, Any]:
    """Where the sweep runs, for ``sweep.json``."""
    import ray

    return {
        "ray_address": ray_address(),
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
        "cluster_resources": {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")},
    }
