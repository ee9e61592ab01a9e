"""The sensitivity cache: one JSON file per (FP32 weights, method, options, candidates,
pins, data), under qatlab's cache folder, written atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from qatlab.atomic import write_json

from .registry import VERSIONS

FORMAT = "qatlab.sensitivity/1"


def _state_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        c = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str((tuple(c.shape), str(c.dtype))).encode())
        h.update(c.numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(method: str, inp: Any, options: Mapping[str, Any]) -> str:
    space = inp.space
    desc = {
        "format": FORMAT,
        "fp32": _state_digest(inp.fp32),
        "method": method,
        "version": VERSIONS.get(method, 1),
        "options": dict(sorted(options.items())),
        "candidates": list(space.candidates),
        "domains": [[k.name, list(k.domain)] for k in space.knobs],
        "w_spec": repr(inp.w_spec),
        "a_spec": repr(inp.a_spec),
        "ste": inp.ste,
        "data": inp.data.digest(),
        "seed": inp.seed,
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_path(key: str) -> Path:
    from qatlab.train import cache_dir

    return cache_dir() / "mixed" / f"sensitivity-{key}.json"


def read_table(key: str) -> dict[str, dict[tuple[int, int], float]] | None:
    p = cache_path(key)
    if not p.exists():
        return None
    try:
        d = json.loads(p.read_text())
        if d.get("format") != FORMAT:
            return None
        return {layer: {(int(w), int(a)): float(v) for w, a, v in rows} for layer, rows in d["table"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged entry is recomputed, never trusted


def write_table(key: str, table: Mapping[str, Mapping[tuple[int, int], float]], method: str) -> None:
    rows = {layer: [[w, a, float(v)] for (w, a), v in sorted(r.items())] for layer, r in table.items()}
    write_json(cache_path(key), {"format": FORMAT, "method": method, "table": rows})
