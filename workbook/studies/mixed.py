"""Mixed-precision study: measured accuracy against ASIC energy of the mixed
configurations and of uniform W8A8/W4A4/W2A2, and each configuration's per-layer bits.

Reads the folder ``benchmarks/mixed_precision.py accuracy --out DIR`` writes: one JSON
row per trained trial (``uniform_w*.json``, ``mixed_*.json``) and ``plan.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

ROW_KEYS = ("name", "test_acc", "int_acc", "energy_uj", "layer_bits")


def load_rows(run_dir: str | Path) -> pd.DataFrame:
    """One row per trained trial: name, kind (uniform | mixed), accuracy, energy, bits."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such results folder")
    rows = []
    for p in sorted(d.glob("*.json")):
        if p.name == "plan.json":
            continue
        r = json.loads(p.read_text())
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"{p}: not a trial row (lacks {', '.join(missing)})")
        rows.append({**{k: r[k] for k in ROW_KEYS}, "kind": "uniform" if r["name"].startswith("uniform") else "mixed"})
    if not rows:
        raise FileNotFoundError(f"{d}: no trial rows (*.json)")
    return pd.DataFrame(rows).sort_values("energy_uj").reset_index(drop=True)


def dominated(df: pd.DataFrame) -> pd.Series:
    """Whether another trial costs at most as much energy and is strictly more accurate."""
    e, a = df.energy_uj.to_numpy(), df.test_acc.to_numpy()
    return pd.Series([bool(((e <= e[i]) & (a > a[i])).any()) for i in range(len(df))], index=df.index)


def frontier_table(df: pd.DataFrame) -> pd.DataFrame:
    out = df[["name", "kind", "energy_uj", "test_acc", "int_acc"]].copy()
    out["test_acc"] = 100 * out.test_acc
    out["int_acc"] = 100 * out.int_acc.astype(float)
    out["dominated"] = dominated(df)
    return out


def frontier_figure(df: pd.DataFrame) -> Any:
    """Accuracy vs energy per inference, uniform and mixed on the same axes."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for kind, marker in (("uniform", "s"), ("mixed", "o")):
        part = df[df.kind == kind]
        ax.plot(part.energy_uj, 100 * part.test_acc, marker=marker, linestyle="-" if kind == "mixed" else ":", label=kind)
        for _, r in part.iterrows():
            ax.annotate(r["name"].replace("uniform_", "").replace("mixed_", ""), (r.energy_uj, 100 * r.test_acc), fontsize=7)
    ax.set_xlabel("ASIC energy per inference (µJ)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    fig.tight_layout()
    return fig


def bit_map(df: pd.DataFrame) -> pd.DataFrame:
    """Layers (rows, network order) x trials (columns): ``W{w}A{a}`` per layer."""
    cols = {}
    for _, r in df.iterrows():
        cols[r["name"]] = {layer: f"W{w}A{a}" for layer, (w, a) in r["layer_bits"].items()}
    return pd.DataFrame(cols)
