"""What the connected Ray offers a sweep: its address, capacity and GPUs, and whether a trial fits at all."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

from workbook.errors import CommandError

_EPS = 1e-9


class ResourcesError(CommandError):
    """No node of the cluster can ever run one trial: Ray would queue it forever."""


def fits(demand: Mapping[str, float], resources: Mapping[str, float]) -> bool:
    """Whether one trial of ``demand`` fits into ``resources`` (a node's total, or what is free)."""
    return all(resources.get(k, 0.0) + _EPS >= v for k, v in demand.items())


def shortfall(demand: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> str | None:
    """Why no node of ``nodes`` (their total resources) can run one trial; None when one can.

    The figures name each resource that no node has enough of, with the most any
    node has; where every resource exists somewhere but never all on one node, it
    says so (a trial runs on one node).
    """
    if not demand or any(fits(demand, n) for n in nodes):
        return None
    if not nodes:
        return "this Ray has no alive node"
    parts = []
    for k, v in demand.items():
        most = max(n.get(k, 0.0) for n in nodes)
        if most + _EPS < v:
            parts.append(f"{k}={_fmt(k, v)} per trial, but the largest node has {_fmt(k, most)}")
    if not parts:
        wanted = ", ".join(f"{k}={_fmt(k, v)}" for k, v in demand.items())
        return f"a trial needs {wanted} on one node, and no node has all of them"
    return "; ".join(parts)


def waiting_for(demand: Mapping[str, float], free: Mapping[str, float], total: Mapping[str, float]) -> str:
    """What a queued trial waits for: each resource it asks more of than is free now."""
    parts = [f"{k} {_fmt(k, v)} (free {_fmt(k, free.get(k, 0.0))} of {_fmt(k, total.get(k, 0.0))})"
             for k, v in demand.items() if free.get(k, 0.0) + _EPS < v]  # fmt: skip
    return ", ".join(parts) or "a free slot"


def _fmt(key: str, v: float) -> str:
    if key == "memory":
        return f"{v / 2**30:.3g} GiB"
    return f"{v:g}"


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def autoscaler_present() -> bool:
    """Whether an autoscaler that can add nodes watches this cluster.

    Ray's autoscaler v1 publishes its status in the GCS key-value store; on a
    cluster started by hand it runs read-only, and every node type it reports is
    the anonymous ``node_<id>``: a named type means a real node configuration. v2
    sets a flag there. Either may be absent on older or newer Rays: then this says no.
    """
    with contextlib.suppress(Exception):
        from ray.experimental.internal_kv import _internal_kv_get

        status = json.loads(_internal_kv_get("__autoscaling_status") or b"{}")
        report = status.get("autoscaler_report") or {}
        types = set(report.get("active_nodes") or {}) | set(report.get("idle_nodes") or {})
        types |= {str(p[1]) for p in report.get("pending_nodes") or [] if isinstance(p, (list, tuple)) and len(p) > 1}
        if any(not t.startswith("node_") for t in types):
            return True
    with contextlib.suppress(Exception):
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return bool(is_autoscaler_v2(fetch_from_server=True))
    return False


def check_demand(demand: Mapping[str, float], echo: Callable[[str], None], nodes: Iterable[Mapping[str, float]] | None = None,
                 autoscaler: bool | None = None) -> None:  # fmt: skip
    """Refuse a per-trial request that no node can satisfy, before anything is submitted.

    With an autoscaler the request stands (it may add such a node) and a line says
    what the trials wait for; without one it is a ResourcesError with the figures.
    """
    node_list = list(_alive_nodes() if nodes is None else nodes)
    why = shortfall(demand, node_list)
    if why is None:
        return
    if autoscaler if autoscaler is not None else autoscaler_present():
        echo(f"waiting: no node can run a trial now ({why}); trials wait for the autoscaler to add one")
        return
    raise ResourcesError(
        f"no node of this Ray can run a trial: {why}",
        where="resources in the spec",
        fix="lower the request, or join a cluster with such a node (--address)",
    )


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
    # A cluster keeps the request: check_demand says whether an autoscaler may add GPU nodes.
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
