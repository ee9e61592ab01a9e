"""Accuracy study over a sweep's results: the table a paper would print, accuracy vs
bits with error bars over seeds, and the integer model's accuracy beside the
fake-quant model's."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

KEYS = ["method", "ste", "granularity", "estimator", "w_bits", "a_bits"]


def load(run_dir: str | Path) -> pd.DataFrame:
    """The sweep's results table (``<run_dir>/results.parquet``), every trial."""
    from workbook.results import read_results

    return read_results(run_dir)


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of test accuracy (%), the IntModel's accuracy and agreement."""
    ok = df[df.status == "ok"].copy()
    if ok.empty:
        return pd.DataFrame(columns=KEYS + ["seeds", "test_acc", "int_acc", "int_agreement", "Δ vs FP32"])
    for col in ("int_acc", "int_agreement"):
        if col not in ok:
            ok[col] = float("nan")
    ok.loc[ok.method == "fp32", ["ste", "granularity", "estimator"]] = "-"
    ok.loc[ok.method == "fp32", ["w_bits", "a_bits"]] = 32
    g = ok.groupby(KEYS, dropna=False)
    fp32 = ok[ok.method == "fp32"].test_acc.mean()
    t = pd.DataFrame(
        {
            "seeds": g.size(),
            "test_mean": 100 * g.test_acc.mean(),
            "test_std": 100 * g.test_acc.std(ddof=0),
            "int_acc": 100 * g.int_acc.mean(),
            "int_agreement": 100 * g.int_agreement.mean(),
        }
    ).reset_index()
    t["test_acc"] = t.test_mean.map("{:.2f}".format) + " ± " + t.test_std.fillna(0).map("{:.2f}".format)
    t["Δ vs FP32"] = (t.test_mean - 100 * fp32).round(2) if pd.notna(fp32) else float("nan")
    t = t.sort_values(["w_bits", "method", "ste"], ascending=[False, True, True])
    return t[KEYS + ["seeds", "test_acc", "int_acc", "int_agreement", "Δ vs FP32"]].round(2).reset_index(drop=True)


def failures(df: pd.DataFrame) -> pd.DataFrame:
    f = df[df.status != "ok"]
    cols = [c for c in ["trial_id", "method", "w_bits", "a_bits", "ste", "granularity", "estimator", "error"] if c in f]
    out = f[cols].copy()
    if "error" in out:
        out["error"] = out["error"].fillna("").map(lambda e: e.strip().splitlines()[-1] if e.strip() else "")
    return out


def plot_acc_vs_bits(df: pd.DataFrame):  # noqa: ANN201 - a matplotlib Figure
    """Test accuracy vs weight bits per (method, STE), error bars = std over seeds."""
    import matplotlib.pyplot as plt

    ok = df[df.status == "ok"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    fp = ok[ok.method == "fp32"].test_acc
    if len(fp):
        ax.axhline(100 * fp.mean(), color="k", ls="--", lw=1, label="FP32")
    q = ok[ok.method != "fp32"]
    for (method, ste), d in q.groupby(["method", "ste"]):
        s = d.groupby("w_bits").test_acc.agg(["mean", "std"]).sort_index()
        ax.errorbar(s.index, 100 * s["mean"], yerr=100 * s["std"].fillna(0), marker="o", capsize=3, label=f"{method} {ste}")
        if "int_acc" in d and d.int_acc.notna().any():
            si = d.groupby("w_bits").int_acc.mean().sort_index()
            ax.plot(si.index, 100 * si.values, ls=":", marker="x", color=ax.lines[-1].get_color(), label=f"{method} {ste} (IntModel)")
    ax.set_xlabel("weight bits")
    ax.set_ylabel("test accuracy (%)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
