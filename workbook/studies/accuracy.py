"""Accuracy study over a sweep's results: the table a paper would print, accuracy vs
bits with error bars over seeds, the integer model's accuracy beside the
fake-quant model's, and PTQ with per-tensor vs per-channel weights (why depthwise
convolutions need the latter)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

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
    from .display import pct_pm

    # "±" only where it is a spread: two or more seeds.
    t["test_acc"] = [pct_pm(m, sd, n) for m, sd, n in zip(t.test_mean, t.test_std, t.seeds)]
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


def bits_label(w: Any, a: Any) -> str:
    return "FP32" if int(w) >= 32 else f"W{int(w)}A{int(a)}"


def plot_acc_vs_bits(df: pd.DataFrame):
    """Test accuracy per bit width (categories, most bits first) for each method and STE:
    markers, not lines, as bit widths are settings, not a continuum. Error bars (std over
    seeds) only where a setting has two or more seeds; the IntModel's accuracy as hollow
    diamonds beside the fake-quant markers."""
    import matplotlib.pyplot as plt

    ok = df[df.status == "ok"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    q = ok[ok.method != "fp32"]
    cats = sorted({(int(w), int(a)) for w, a in zip(q.w_bits, q.a_bits)}, reverse=True)
    pos = {c: i for i, c in enumerate(cats)}
    fp = ok[ok.method == "fp32"].test_acc
    if len(fp):
        ax.axhline(100 * fp.mean(), color="k", ls="--", lw=1, label=f"FP32 ({100 * fp.mean():.2f} %)")
    series = list(q.groupby(["method", "ste"]))
    width = 0.6 / max(1, len(series))
    for k, ((method, ste), d) in enumerate(series):
        off = (k - (len(series) - 1) / 2) * width
        g = d.groupby(["w_bits", "a_bits"])
        s = g.test_acc.agg(["mean", "std", "size"])
        xs = [pos[(int(w), int(a))] + off for w, a in s.index]
        err = [100 * sd if n >= 2 and pd.notna(sd) else 0.0 for sd, n in zip(s["std"], s["size"])]
        name = f"{method.upper()} {ste}" if method == "qat" else method.upper()
        line = ax.errorbar(xs, 100 * s["mean"], yerr=err if any(err) else None, ls="none", marker="o", ms=7, capsize=3, label=name)
        if "int_acc" in d and d.int_acc.notna().any():
            si = g.int_acc.mean()
            xi = [pos[(int(w), int(a))] + off + width * 0.35 for w, a in si.index]
            color = line[0].get_color()
            ax.plot(xi, 100 * si.values, ls="none", marker="D", ms=8, mfc="none", mew=1.5, color=color, label=f"{name} (IntModel)")
    ax.set_xticks(range(len(cats)), [bits_label(w, a) for w, a in cats])
    ax.set_xlim(-0.6, max(0, len(cats) - 1) + 0.6)
    ax.set_xlabel("bit width (weights W, activations A)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: it hides no point
    ax.set_title("test accuracy per bit width", fontsize=9)
    fig.tight_layout()
    return fig


PAPER_UNITS = {
    "test_acc": "test accuracy (%)",
    "int_acc": "IntModel accuracy (%)",
    "int_agreement": "IntModel agreement (%)",
    "Δ vs FP32": "Δ vs FP32 (points)",
}


def paper_view(df: pd.DataFrame) -> Any:
    """:func:`paper_table` as the report shows it: units in the headers, 2 decimals."""
    from .display import Table, format_frame

    t = paper_table(df)
    t["bits"] = [bits_label(w, a) for w, a in zip(t.w_bits, t.a_bits)]
    t = t[["bits", "method", "ste", "granularity", "estimator", "seeds", "test_acc", "int_acc", "int_agreement", "Δ vs FP32"]]
    f = format_frame(
        t, percent=["int_acc", "int_agreement", "Δ vs FP32"], keep=["bits", "method", "ste", "granularity", "estimator", "test_acc"]
    )
    return Table(f.rename(columns=PAPER_UNITS), empty="no trial finished")


def intro(df: pd.DataFrame) -> str:
    """What this page compares, from what the run has (no promise of a method, STE or
    error bar the run lacks)."""
    ok = df[df.status == "ok"]
    parts = []
    if (ok.method == "fp32").any():
        parts.append("FP32")
    if (ok.method == "ptq").any():
        parts.append("post-training quantization (PTQ)")
    stes = sorted(set(ok[ok.method == "qat"].ste.dropna()))
    if stes:
        parts.append(f"quantization-aware training (QAT; STE: {', '.join(stes)})")
    if not parts:
        return "The run has no finished trial to compare."
    seeds = ok.groupby(KEYS, dropna=False).size() if len(ok) else pd.Series(dtype=int)
    spread = (
        f"Error bars: standard deviation over seeds (up to {int(seeds.max())} per setting)."
        if len(seeds) and seeds.max() >= 2
        else "One seed per setting: no error bars."
    )
    bits = sorted({bits_label(w, a) for w, a in zip(ok.w_bits, ok.a_bits) if pd.notna(w)} - {"FP32"}, reverse=True)
    has_int = "int_acc" in ok and ok.int_acc.notna().any()
    return f"This run compares {', '.join(parts)} at {', '.join(bits) or 'no quantized bit width'}. {spread}" + (
        " Beside each fake-quant accuracy, the pure integer model's (IntModel)." if has_int else ""
    )


def key_findings(df: pd.DataFrame) -> list[str]:
    """Sentences with this run's numbers: FP32, the best setting per bit width, the QAT −
    PTQ gap where the run has both, and how closely the integer model follows."""
    from .display import pct, pct_pm

    ok = df[df.status == "ok"]
    out: list[str] = []
    failed = int((df.status != "ok").sum())
    if ok.empty:
        return [f"no trial finished ({failed} failed)"]
    fp = ok[ok.method == "fp32"].test_acc
    fp_mean = 100 * float(fp.mean()) if len(fp) else math.nan
    if len(fp):
        out.append(f"FP32: {pct_pm(fp_mean, 100 * float(fp.std(ddof=0)), len(fp))} % test accuracy.")
    q = ok[ok.method != "fp32"]
    means = q.groupby(KEYS, dropna=False).test_acc.agg(["mean", "std", "size"]).reset_index()
    for (w, a), g in sorted(means.groupby(["w_bits", "a_bits"]), key=lambda kv: (-kv[0][0], -kv[0][1])):
        r = g.loc[g["mean"].idxmax()]
        name = f"{r.method.upper()} {r.ste}" if r.method == "qat" else f"{r.method.upper()}"
        delta = f" ({100 * r['mean'] - fp_mean:+.2f} points vs FP32)" if not math.isnan(fp_mean) else ""
        out.append(f"Best at {bits_label(w, a)}: {name}, {pct_pm(100 * r['mean'], 100 * r['std'], int(r['size']))} %{delta}.")
        best = {m: 100 * float(g[g.method == m]["mean"].max()) for m in ("qat", "ptq") if (g.method == m).any()}
        if len(best) == 2:
            out.append(f"QAT − PTQ at {bits_label(w, a)}: {best['qat'] - best['ptq']:+.2f} points (best of each).")
    if "int_acc" in q and q.int_acc.notna().any():
        gap = (100 * (q.int_acc - q.test_acc)).abs().max()
        agree = 100 * q.int_agreement.min() if "int_agreement" in q and q.int_agreement.notna().any() else math.nan
        out.append(
            f"The integer models are within {pct(gap)} points of their fake-quant models"
            + (f" and agree on at least {pct(agree)} % of the test predictions." if not math.isnan(agree) else ".")
        )
    if failed:
        out.append(f"{failed} trial{'s' if failed > 1 else ''} failed: see the end of the page.")
    return out


def failures_section(df: pd.DataFrame) -> Any:
    """The failed trials with their last error line, under a heading; None when none failed."""
    from .display import Group, Heading, Table

    f = failures(df)
    if f.empty:
        return None
    return Group([Heading(f"Failed trials ({len(f)})"), Table(f.astype(str))])


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
    ax.set_xlabel("setting (model, bits, range estimator)")
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


def granularity_section(run_dir: str | Path | None, df: pd.DataFrame) -> Any:
    """Per-tensor vs per-channel PTQ: table, bars and the weight-range study, or a note
    when the run has no such pair."""
    from .display import Group, Note, Table, format_frame, section

    t = granularity_table(df)
    if t.empty:
        return Note("This run has no PTQ setting with both per-tensor and per-channel weights, so there is nothing to compare here.")
    acc_cols = [c for c in GRAN_COLUMNS if c not in GRAN_KEYS]
    table = Table(format_frame(t, percent=acc_cols, keep=["model", "estimator"]), caption="test accuracy (%), mean over seeds")
    effect = section("the weight-range study", depthwise_effect, run_dir, df)
    if isinstance(effect, pd.DataFrame):
        effect = Table(format_frame(effect, keep=["kind"]), caption="weight ranges and 8-bit weight SQNR (dB) by layer kind")
    return Group([table, section("the granularity figure", plot_granularity, df), effect])
