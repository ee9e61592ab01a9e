"""Accuracy study over a sweep's results: the table a paper would print, accuracy vs
bits with error bars over seeds, the integer model's accuracy beside the
fake-quant model's, and PTQ with per-tensor vs per-channel weights (why depthwise
convolutions need the latter)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

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


def plot_acc_vs_bits(df: pd.DataFrame):
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


# ---- weight granularity: one scale per tensor vs one per output channel ---------------
GRAN_KEYS = ["model", "w_bits", "a_bits", "estimator"]
GRAN_COLUMNS = GRAN_KEYS + ["FP32", "per-tensor", "per-channel", "per-channel − per-tensor", "IntModel per-tensor", "IntModel per-channel"]


def granularity_table(df: pd.DataFrame) -> pd.DataFrame:
    """PTQ with per-tensor vs per-channel weights, side by side (test accuracy %, mean
    over seeds), for every setting the run has with both; empty when it has none.

    Depthwise convolutions are where the two part: each output channel is one 3x3
    filter with its own range, and one scale for all of them rounds the small filters
    to a few codes (see :func:`weight_range_table`).
    """
    ok = df[(df.status == "ok") & (df.method == "ptq")] if "method" in df else df.iloc[0:0]
    if ok.empty or not {"tensor", "channel"} <= set(ok.granularity):
        return pd.DataFrame(columns=GRAN_COLUMNS)
    ok = ok.copy()
    if "model" not in ok:
        ok["model"] = "-"
    if "int_acc" not in ok:
        ok["int_acc"] = float("nan")
    fp = df[(df.status == "ok") & (df.method == "fp32")]
    fp_by_model = fp.groupby("model").test_acc.mean() if "model" in fp else pd.Series(dtype=float)
    means = ok.groupby(GRAN_KEYS + ["granularity"], dropna=False)[["test_acc", "int_acc"]].mean().unstack("granularity")
    rows = []
    for key, r in means.iterrows():
        if pd.isna(r.get(("test_acc", "tensor"))) or pd.isna(r.get(("test_acc", "channel"))):
            continue
        t, c = 100 * r[("test_acc", "tensor")], 100 * r[("test_acc", "channel")]
        rows.append(
            {
                **dict(zip(GRAN_KEYS, key)),
                "FP32": 100 * fp_by_model.get(key[0], float("nan")),
                "per-tensor": t,
                "per-channel": c,
                "per-channel − per-tensor": c - t,
                "IntModel per-tensor": 100 * r[("int_acc", "tensor")],
                "IntModel per-channel": 100 * r[("int_acc", "channel")],
            }
        )
    return pd.DataFrame(rows, columns=GRAN_COLUMNS).round(2)


def plot_granularity(df: pd.DataFrame):
    """Bars: FP32, PTQ per-tensor and PTQ per-channel weights per setting (None when the
    run has no such pair)."""
    t = granularity_table(df)
    if t.empty:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = [f"{r.model} W{r.w_bits}A{r.a_bits} {r.estimator}" for r in t.itertuples()]
    x = range(len(t))
    for i, (col, color) in enumerate((("FP32", "0.6"), ("per-tensor", "tab:red"), ("per-channel", "tab:blue"))):
        ax.bar([v + (i - 1) * 0.27 for v in x], t[col], width=0.27, color=color, label=f"PTQ {col}" if col != "FP32" else col)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    lo = min(t[["FP32", "per-tensor", "per-channel"]].min().min(), 100)
    ax.set_ylim(max(0, lo - 5), 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def folded_weights(model: nn.Module) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, layer, weight) of every Conv2d and Linear, with a BatchNorm that follows a
    conv folded in (``W·γ/σ``): the weights that PTQ quantizes."""
    from torch import fx

    gm = fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[str(node.target)], (nn.Conv2d, nn.Linear)):
            continue
        layer = mods[str(node.target)]
        w = layer.weight.detach()
        users = list(node.users)
        bn = mods.get(str(users[0].target)) if len(users) == 1 and users[0].op == "call_module" else None
        if isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            f = (bn.weight.detach() if bn.weight is not None else 1.0) / torch.sqrt(bn.running_var + bn.eps)
            w = w * f.reshape(-1, 1, 1, 1)
        out.append((str(node.target), layer, w))
    return out


def layer_kind(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return "linear"
    assert isinstance(layer, nn.Conv2d)
    if layer.groups > 1 and layer.groups == layer.in_channels:
        return "depthwise"
    return "pointwise" if layer.kernel_size == (1, 1) else "conv"


def weight_range_table(model: nn.Module, bits: int = 8) -> pd.DataFrame:
    """Per layer: how far apart its output channels' weight ranges are, and the weight
    SQNR (dB) at ``bits`` with one scale per tensor vs one per channel (symmetric min/max).

    ``range spread`` = largest / median per-channel max|w|: the factor by which a
    per-tensor scale is too coarse for a typical channel.
    """
    from qatlab.quant import QuantSpec, dequantize, quantize, sqnr_db

    rows = []
    for name, layer, w in folded_weights(model):
        per_ch = w.reshape(w.shape[0], -1).abs().amax(1)
        sq = {}
        for gran in ("tensor", "channel"):
            q, qp = quantize(w, QuantSpec(bits=bits, symmetric=True, granularity=gran, axis=0))
            sq[gran] = sqnr_db(w, dequantize(q, qp))
        rows.append(
            {
                "layer": name,
                "kind": layer_kind(layer),
                "shape": "x".join(map(str, w.shape)),
                "range spread": float(per_ch.max() / per_ch.median().clamp(min=1e-12)),
                f"SQNR per-tensor W{bits} (dB)": sq["tensor"],
                f"SQNR per-channel W{bits} (dB)": sq["channel"],
                "per-channel gain (dB)": sq["channel"] - sq["tensor"],
            }
        )
    return pd.DataFrame(rows).round(2)


def depthwise_effect(run_dir: str | Path | None, df: pd.DataFrame, bits: int = 8) -> pd.DataFrame:
    """Weight ranges and SQNR by layer kind (mean over layers) of the run's FP32 model,
    when the run compares per-tensor and per-channel PTQ; empty otherwise."""
    if run_dir is None or granularity_table(df).empty:
        return pd.DataFrame()
    model = _fp32_model(run_dir)
    if model is None:
        return pd.DataFrame()
    t = weight_range_table(model, bits)
    g = t.drop(columns=["layer", "shape"]).groupby("kind")
    out = g.mean().round(2)
    out.insert(0, "layers", g.size())
    return out.reset_index()


def _fp32_model(run_dir: str | Path) -> nn.Module | None:
    """The run's FP32 model (its fp32 trial's checkpoint), or None if it saved none."""
    from qatlab.train import load_checkpoint

    for p in sorted(Path(run_dir).glob("trials/*/model.pt")):
        m, cfg, _ = load_checkpoint(p)
        if cfg.method == "fp32":
            return m
    return None
