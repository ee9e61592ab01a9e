"""Mixed-precision study: measured accuracy against hardware cost of the mixed
configurations and of uniform W8A8/W4A4/W2A2 on the same axes, and each configuration's
per-layer bits.

Reads a sweep folder whose spec has a ``mixed:`` block (``results.parquet``: the mixed
trials carry ``mixed``, ``mixed_metric``, ``predicted_cost``, ``actual_cost``; every
ptq/qat trial ``cost_<metric>``), or the folder ``benchmarks/mixed_precision.py accuracy
--out DIR`` writes (one JSON row per trial, ASIC energy).

The common frame (:func:`load`): ``name``, ``kind`` (uniform | mixed), ``group`` (the
plan's base config: uniform trials are compared with the mixed ones they share it
with), ``status``, ``cost``, ``predicted``, ``test_acc``, ``int_acc``, ``layer_bits``,
``error``; ``attrs``: ``metric``, ``unit``, ``higher_is_better`` (frame rates).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

ROW_KEYS = ("name", "test_acc", "int_acc", "energy_uj", "layer_bits")
FRAME_COLUMNS = ("name", "kind", "group", "status", "cost", "predicted", "test_acc", "int_acc", "layer_bits", "error")


def _with_attrs(df: pd.DataFrame, metric: str, unit: str, higher: bool) -> pd.DataFrame:
    df.attrs.update(metric=metric, unit=unit, higher_is_better=higher)
    return df


def load(run_dir: str | Path) -> pd.DataFrame:
    """A sweep folder (it has ``results.parquet``) or the benchmark's folder."""
    d = Path(run_dir)
    return load_run(d) if (d / "results.parquet").is_file() else load_rows(d)


def load_rows(run_dir: str | Path) -> pd.DataFrame:
    """The benchmark's folder: one row per trained trial (``uniform_*`` / ``mixed_*``), ASIC energy as the cost."""
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
        kind = "uniform" if r["name"].startswith("uniform") else "mixed"
        rows.append({**{k: r[k] for k in ROW_KEYS}, "kind": kind, "group": "", "status": "ok", "cost": r["energy_uj"],
                     "predicted": None, "error": None})  # fmt: skip
    if not rows:
        raise FileNotFoundError(f"{d}: no trial rows (*.json)")
    df = pd.DataFrame(rows).sort_values("cost").reset_index(drop=True)
    return _with_attrs(df, "asic_energy", "uJ", False)


def _bits(v: Any) -> dict[str, list[int]] | None:
    """layer_bits as parquet gives it back (a struct over every trial's layers, or JSON text)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, str):
        v = json.loads(v)
    out = {str(k): [int(b) for b in bits] for k, bits in dict(v).items() if bits is not None}
    return out or None


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df else pd.Series([None] * len(df), index=df.index, dtype=object)


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """The mixed trials of a sweep and the uniform qat trials of the same plans."""
    from qatlab.mixed.metrics import METRICS
    from workbook.results import read_results

    df = read_results(run_dir)
    is_mixed = _col(df, "mixed").notna() | (_col(df, "origin") == "mixed")
    mixed = df[is_mixed]
    if mixed.empty:
        raise ValueError(f"{run_dir}: the sweep has no mixed-precision trials (its spec has no mixed: block)")
    metric = str(_col(mixed, "mixed_metric").dropna().iloc[0]) if _col(mixed, "mixed_metric").notna().any() else None
    if metric is None or metric not in METRICS:
        raise ValueError(f"{run_dir}: the mixed trials name no known metric (mixed_metric: {metric!r})")
    m = METRICS[metric]
    groups = set(_col(mixed, "mixed_base").dropna())
    uniform = df[(~is_mixed) & (df.method == "qat") & _col(df, "mixed_base").isin(groups)]
    rows = []
    for kind, part in (("uniform", uniform), ("mixed", mixed)):
        for _, r in part.iterrows():
            cost = r.get(f"cost_{metric}")
            rows.append({
                "name": str(r["mixed"]) if kind == "mixed" and isinstance(r.get("mixed"), str) else f"W{int(r.w_bits)}A{int(r.a_bits)}",
                "kind": kind, "group": r.get("mixed_base"), "status": r.status,
                "cost": None if cost is None or pd.isna(cost) else float(cost),
                "predicted": float(r["predicted_cost"]) if kind == "mixed" and pd.notna(r.get("predicted_cost")) else None,
                "test_acc": r.test_acc, "int_acc": r.get("int_acc"),
                "layer_bits": _bits(r.get("layer_bits")) if kind == "mixed" else None,
                "error": r.error if r.status != "ok" else r.get("cost_error"),
            })  # fmt: skip
    out = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    out = out.sort_values(["kind", "cost"], ascending=[False, True], na_position="last").reset_index(drop=True)
    return _with_attrs(out, metric, m.unit, m.kind == "fps")


def _usable(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df.status == "ok") & df.cost.notna() & df.test_acc.notna()]


def dominated(df: pd.DataFrame) -> pd.Series:
    """Whether another trial costs at most as much (for a frame rate: runs at least as
    fast) and is strictly more accurate."""
    higher = bool(df.attrs.get("higher_is_better", False))
    c, a = df.cost.astype(float).to_numpy(), df.test_acc.astype(float).to_numpy()
    as_good = (c >= c[:, None]) if higher else (c <= c[:, None])
    return pd.Series([bool((as_good[i] & (a > a[i])).any()) for i in range(len(df))], index=df.index)


def axis_label(df: pd.DataFrame) -> str:
    return f"{df.attrs.get('metric', 'cost')} ({df.attrs.get('unit', '')})"


def frontier_table(df: pd.DataFrame) -> pd.DataFrame:
    """Trained trials by cost: accuracy (%), and whether another trial dominates them."""
    ok = _usable(df)
    out = ok[["name", "kind", "cost", "predicted", "test_acc", "int_acc"]].copy()
    out["test_acc"] = 100 * out.test_acc.astype(float)
    out["int_acc"] = 100 * pd.to_numeric(out.int_acc, errors="coerce")
    out["dominated"] = dominated(ok)
    return out.sort_values("cost").reset_index(drop=True)


def frontier_view(df: pd.DataFrame) -> Any:
    from .display import Table, format_frame

    t = frontier_table(df)
    t = t.rename(columns={"cost": axis_label(df), "predicted": "predicted", "test_acc": "test acc (%)", "int_acc": "IntModel acc (%)"})
    return Table(format_frame(t, percent=("test acc (%)", "IntModel acc (%)"), keep=("name", "kind")),
                 caption="Trained trials by measured cost; predicted: the plan's cost of the configuration.",
                 empty="no trained trial has a cost")  # fmt: skip


def frontier_figure(df: pd.DataFrame) -> Any:
    """Test accuracy against measured cost, uniform and mixed on the same axes."""
    import matplotlib.pyplot as plt

    ok = _usable(df)
    if ok.empty:
        raise ValueError("no trained trial has both an accuracy and a cost")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for kind, marker in (("uniform", "s"), ("mixed", "o")):
        part = ok[ok.kind == kind].sort_values("cost")
        if part.empty:
            continue
        ax.plot(part.cost, 100 * part.test_acc.astype(float), marker=marker, linestyle="-" if kind == "mixed" else ":", label=kind)
        for _, r in part.iterrows():
            short = re.sub(r"^(uniform_|mixed_|mixed-[a-z0-9_]+-)", "", str(r["name"]))
            ax.annotate(short, (r.cost, 100 * float(r.test_acc)), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel(axis_label(df))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"accuracy against {df.attrs.get('metric', 'cost')}")
    ax.legend()
    fig.tight_layout()
    return fig


def _layer_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _bits_cell(bits: list[int]) -> str:
    return f"W{bits[0]}A{bits[1]}" if len(bits) == 2 else f"A{bits[0]}"


def bit_map(df: pd.DataFrame) -> pd.DataFrame:
    """Layers (rows, in network order) x configurations (columns): ``W{w}A{a}`` per layer,
    ``A{a}`` per activation quantizer that feeds no layer (its one-element entry)."""
    cols = {}
    for _, r in df.iterrows():
        bits = r.get("layer_bits")
        if isinstance(bits, dict) and bits:
            cols[r["name"]] = {layer: _bits_cell(b) for layer, b in bits.items()}
    out = pd.DataFrame(cols)
    return out.loc[sorted(out.index, key=_layer_key)] if len(out) else out


def bit_map_view(df: pd.DataFrame) -> Any:
    from .display import Table

    bm = bit_map(df)
    return Table(bm.reset_index(names="layer") if len(bm) else bm, caption="", empty="no configuration has per-layer bits")


def _fmt(v: float, unit: str) -> str:
    from .display import sig3

    return f"{sig3(v)} {unit}"


def key_findings(df: pd.DataFrame) -> list[str]:
    """The page's opening sentences, from this run's numbers."""
    unit, metric = str(df.attrs.get("unit", "")), str(df.attrs.get("metric", "cost"))
    higher = bool(df.attrs.get("higher_is_better", False))
    ok = _usable(df)
    mixed, uniform = ok[ok.kind == "mixed"], ok[ok.kind == "uniform"]
    out = []
    n_mixed = int((df.kind == "mixed").sum())
    out.append(
        f"{len(mixed)} of {n_mixed} mixed-precision configurations trained, against {len(uniform)} uniform trials, on {metric} ({unit})."
    )
    for _, r in mixed.sort_values("cost").iterrows():
        within = uniform[(uniform.cost >= r.cost) if higher else (uniform.cost <= r.cost)]
        s = f"{r['name']}: {100 * float(r.test_acc):.2f}% at {_fmt(r.cost, unit)}"
        if within.empty:
            s += f"; no uniform trial {'runs that fast' if higher else 'is that cheap'}"
        else:
            best = within.loc[within.test_acc.astype(float).idxmax()]
            diff = 100 * (float(r.test_acc) - float(best.test_acc))
            s += f"; the best uniform trial within it, {best['name']}, reaches {100 * float(best.test_acc):.2f}% at {_fmt(best.cost, unit)} ({diff:+.2f} points)"
        out.append(s + ".")
    if len(mixed):
        front = int((~dominated(ok)[ok.kind == "mixed"]).sum())
        out.append(
            f"{front} of {len(mixed)} mixed configurations are on the measured frontier (no trial is both cheaper and more accurate)."
        )
        pred = mixed[mixed.predicted.notna()]
        if len(pred):
            off = pred[pred.predicted != pred.cost]
            if off.empty:
                out.append(
                    f"The plan's predicted {metric} equals what the simulators report for the trained integer model, for all {len(pred)}."
                )
            else:
                out.append(
                    f"Predicted and measured {metric} differ for {', '.join(map(str, off['name']))}: the cost tables and the trained model disagree."
                )
    for _, r in df[(df.kind == "mixed") & (df.status != "ok")].iterrows():
        last = [ln for ln in str(r.error or "").strip().splitlines() if ln.strip()]
        out.append(f"{r['name']} did not train: {last[-1] if last else 'failed'}.")
    return out
