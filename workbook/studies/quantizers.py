"""Quantizer study: reconstruction error of every granularity × estimator × bits on a
trained model's real weights and activations, and the half-range erratum's cost."""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd
import torch
from torch import nn

from qatlab.quant import ESTIMATORS, QuantSpec, compute_qparams, error_report, fake_quantize

GRANULARITIES = ("tensor", "channel", "group:16", "element")


def capture_tensors(
    model: nn.Module, x: torch.Tensor, max_act_values: int = 200_000, max_weight_values: int = 50_000
) -> dict[str, torch.Tensor]:
    """Weights and input activations of every Conv2d / Linear of a float model.

    Activations are the layer inputs on the batch ``x``, laid out channel-first
    ([C, ...]) so that channel granularity means per input channel, and subsampled
    to at most ``max_act_values`` values to keep the search estimators fast. Weights
    keep whole output channels, the first ones up to ``max_weight_values`` values.
    """
    tensors: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name: str):
        def fn(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            a = inp[0].detach()
            a = a.movedim(1, 0).reshape(a.shape[1], -1) if a.dim() > 1 else a.reshape(1, -1)
            keep = max(1, min(a.shape[1], max_act_values // max(1, a.shape[0])))
            tensors[f"{name}.act"] = a[:, :keep].contiguous()

        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
            rows = max(1, min(w.shape[0], max_weight_values // max(1, w.shape[1])))
            tensors[f"{name}.weight"] = w[:rows].clone()
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return tensors


def error_table(
    tensors: dict[str, torch.Tensor],
    bits: Iterable[int] = (8, 4, 2),
    granularities: Iterable[str] = GRANULARITIES,
    estimators: Iterable[str] = ESTIMATORS,
    mse_grid: int = 40,
) -> pd.DataFrame:
    """One row per tensor × bits × granularity × estimator (+ the half-range rule for minmax).

    Weights are symmetric signed; activations asymmetric. A combination an estimator
    refuses (the histogram method on groups smaller than its level count) is a row
    with its reason in ``error`` and NaN metrics, not a crash.
    """
    rows = []
    for name, t in tensors.items():
        kind = "weight" if name.endswith(".weight") else "act"
        for b in bits:
            for g in granularities:
                if g.startswith("group:") and t.shape[1] % int(g.split(":")[1]):
                    continue
                for est in estimators:
                    for rule in ("standard", "halfrange") if est == "minmax" else ("standard",):
                        spec = QuantSpec(
                            bits=b, symmetric=kind == "weight", granularity=g, axis=0, estimator=est, scale_rule=rule, mse_grid=mse_grid
                        )
                        row = {
                            "tensor": name,
                            "kind": kind,
                            "bits": b,
                            "granularity": g,
                            "estimator": est,
                            "scale_rule": rule,
                            "numel": t.numel(),
                        }
                        try:
                            row.update(error_report(t, fake_quantize(t, spec)), error=None)
                        except ValueError as e:
                            row.update(sqnr_db=math.nan, mse=math.nan, max_abs_error=math.nan, cosine=math.nan, error=str(e))
                        rows.append(row)
    return pd.DataFrame(rows)


# One scale per value reconstructs every value up to float rounding (≈150 dB, or ∞
# where the error is exactly 0): a bound, not a quantizer one would deploy.
DEGENERATE = ("element",)
DEGENERATE_NOTE = (
    "Per-element granularity (one scale per value) is left out of the tables and plots: it reproduces every value "
    "up to float rounding (≈150 dB SQNR, ∞ where the error is exactly 0), a bound rather than a usable quantizer."
)
REFUSED_NOTE = (
    "“–”: no finite measurement, e.g. the estimator refuses that combination (the histogram method needs more values "
    "per group than it has levels; see the end of the page)."
)


def usable(table: pd.DataFrame) -> pd.DataFrame:
    """The rows the report compares: no degenerate granularity, no refused combination,
    no infinite SQNR (see :func:`finite`)."""
    t = table[~table.granularity.isin(DEGENERATE) & table.error.isna()]
    return finite(t)[lambda d: d.sqnr_db.notna()]


def finite(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with infinite SQNR as NaN, so means skip it: +∞ is a tensor quantized
    without any error (a constant or all-zero channel), −∞ one with no signal; neither is
    a level of quality a mean can carry."""
    return table.assign(sqnr_db=table.sqnr_db.where(table.sqnr_db.abs() != math.inf))


def infinite_note(table: pd.DataFrame) -> str:
    """What the tables left out of their means, and why ("–" cells included)."""
    t = table[~table.granularity.isin(DEGENERATE)]
    pos, neg = int((t.sqnr_db == math.inf).sum()), int((t.sqnr_db == -math.inf).sum())
    parts = []
    if pos:
        parts.append(f"{pos} measurement{'s' if pos > 1 else ''} had no error at all (SQNR ∞: constant or all-zero rows)")
    if neg:
        parts.append(f"{neg} had no signal (SQNR −∞)")
    text = "; ".join(parts) + ": left out of the means. " if parts else ""
    return text + REFUSED_NOTE


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean SQNR (dB) over tensors, by kind × bits × granularity × estimator (standard
    rule, degenerate granularities left out; NaN where an estimator refused)."""
    t = table[(table.scale_rule == "standard") & ~table.granularity.isin(DEGENERATE)]
    t = finite(t.assign(sqnr_db=t.sqnr_db.where(t.error.isna())))
    return t.pivot_table(index=["kind", "bits", "granularity"], columns="estimator", values="sqnr_db", aggfunc="mean", dropna=False).round(
        2
    )


def summary_view(table: pd.DataFrame) -> Any:
    from .display import Table, format_frame

    s = summary(table).reset_index()
    s["kind"] = s["kind"].map({"weight": "weights", "act": "activations"}).fillna(s["kind"])
    return Table(format_frame(s, keep=["kind", "granularity"]), caption="mean SQNR (dB) over layers, standard scale rule")


def halfrange_cost(table: pd.DataFrame) -> pd.DataFrame:
    """SQNR lost to the half-range erratum (standard − halfrange), minmax, by kind × bits × granularity."""
    # Per tensor first, and only tensors with both rules finite: a mean over different
    # tensors for the two rules would compare unlike things.
    per = finite(table[(table.estimator == "minmax") & ~table.granularity.isin(DEGENERATE)]).pivot_table(
        index=["tensor", "kind", "bits", "granularity"], columns="scale_rule", values="sqnr_db", aggfunc="mean"
    )
    cols = ["halfrange", "standard", "loss_db"]
    if not {"standard", "halfrange"} <= set(per.columns):
        return pd.DataFrame(columns=cols, index=pd.MultiIndex.from_tuples([], names=["kind", "bits", "granularity"]))
    per = per.dropna(subset=["standard", "halfrange"])
    per["loss_db"] = per["standard"] - per["halfrange"]
    t = per.groupby(level=["kind", "bits", "granularity"])[cols].mean()
    t.columns.name = "scale_rule"
    return t.round(2)


def halfrange_view(table: pd.DataFrame) -> Any:
    from .display import Table, format_frame

    h = (
        halfrange_cost(table)
        .reset_index()
        .rename(columns={"standard": "standard SQNR (dB)", "halfrange": "half-range SQNR (dB)", "loss_db": "loss (dB)"})
    )
    h["kind"] = h["kind"].map({"weight": "weights", "act": "activations"}).fillna(h["kind"])
    return Table(format_frame(h, keep=["kind", "granularity"]), caption="min/max ranges: standard vs half-range scale")


ONE_BIT_DB = 20 * math.log10(2)  # 6.02 dB: what one bit of resolution is worth


def halfrange_explained(table: pd.DataFrame) -> str:
    """What the half-range table shows, in numbers: ≈6 dB (one bit) where the half-range
    divisor is half the standard one, nothing where the two coincide (symmetric signed
    2-bit: 2^(b−2) = 1 = 2^(b−1) − 1), and how far the measured means stray from 6.02 dB."""
    h = halfrange_cost(table).reset_index()
    if h.empty:
        return "The run has no min/max rows to compare the two scale rules on."
    parts = []
    for (kind, bits), g in sorted(h.groupby(["kind", "bits"]), key=lambda kv: (kv[0][0], -kv[0][1])):
        parts.append(f"{'weights' if kind == 'weight' else 'activations'} at {bits} bits lose {g.loss_db.mean():.1f} dB")
    text = f"Measured (mean over granularities): {'; '.join(parts)}. One bit is worth {ONE_BIT_DB:.2f} dB. "
    w2 = h[(h.kind == "weight") & (h.bits == 2)]
    if len(w2) and w2.loss_db.abs().max() < 0.05:
        text += (
            "At 2 bits the symmetric weights lose nothing: there the half-range divisor 2^(b−2) = 1 equals the standard "
            "divisor 2^(b−1) − 1 = 1, so both rules pick the same scale. "
        )
    text += "Elsewhere the loss strays from 6.02 dB because rounding error is not uniform at few levels and clipping shifts with the range."
    return text


def key_findings(table: pd.DataFrame) -> list[str]:
    """Sentences with this run's numbers: the best granularity × estimator per kind and
    bit width, what per-channel scales gain, what the half-range rule costs."""
    u = usable(table[table.scale_rule == "standard"])
    if u.empty:
        return ["no usable quantizer measurement in this run"]
    out = []
    means = u.groupby(["kind", "bits", "granularity", "estimator"]).sqnr_db.mean().reset_index()
    for kind in ("weight", "act"):
        for bits in sorted(means[means.kind == kind].bits.unique(), reverse=True):
            g = means[(means.kind == kind) & (means.bits == bits)]
            top = g[g.sqnr_db >= g.sqnr_db.max() - 0.005]  # ties (ema = minmax on one batch) are named together
            r = top.iloc[0]
            ests = " / ".join(top[top.granularity == r.granularity].estimator)
            out.append(
                f"{'Weights' if kind == 'weight' else 'Activations'}, {bits} bits: best is {r.granularity} {ests} at {r.sqnr_db:.3g} dB SQNR."
            )
    mm = means[(means.kind == "weight") & (means.estimator == "minmax")].pivot_table(index="bits", columns="granularity", values="sqnr_db")
    if {"tensor", "channel"} <= set(mm.columns) and len(mm):
        b = int(mm.index.max())
        out.append(
            f"Per-channel weight scales gain {mm.loc[b, 'channel'] - mm.loc[b, 'tensor']:.2g} dB over one scale per tensor at {b} bits (min/max)."
        )
    h = halfrange_cost(table).reset_index()
    hi = h[h.bits >= 4]
    if len(hi):
        out.append(f"The half-range rule costs {hi.loss_db.mean():.1f} dB on average at 4 and more bits (one bit = {ONE_BIT_DB:.2f} dB).")
    return out


def clip_ranges(x: torch.Tensor, bits: int, symmetric: bool, estimators: Iterable[str] = ESTIMATORS) -> dict[str, tuple[float, float]]:
    """Per-tensor clip range [lo, hi] each estimator picks (for the histogram plots)."""
    out = {}
    for est in estimators:
        spec = QuantSpec(bits=bits, symmetric=symmetric, estimator=est)
        try:
            qp = compute_qparams(x, spec)
        except ValueError:
            continue
        s, z = float(qp.scale), int(qp.zero_point)
        out[est] = (s * (qp.qmin - z), s * (qp.qmax - z))
    return out


def tensor_title(name: str) -> str:
    """``9.weight`` -> ``layer 9: weights``; ``4.act`` -> ``layer 4: input activations``."""
    layer, _, what = name.rpartition(".")
    return f"layer {layer or '?'}: {'weights' if what == 'weight' else 'input activations'}"


def plot_sqnr_vs_bits(table: pd.DataFrame, kind: str = "weight"):
    """Mean SQNR per bit width, one panel per granularity (per-element left out)."""
    import matplotlib.pyplot as plt

    t = usable(table[(table.kind == kind) & (table.scale_rule == "standard")])
    grans = list(dict.fromkeys(t.granularity))
    fig, axes = plt.subplots(1, max(1, len(grans)), figsize=(3.2 * max(1, len(grans)), 3.0), sharey=True, squeeze=False)
    what = "weights" if kind == "weight" else "input activations"
    for ax, g in zip(axes[0], grans):
        for est, d in t[t.granularity == g].groupby("estimator"):
            m = d.groupby("bits").sqnr_db.mean()
            ax.plot(m.index, m.values, marker="o", label=est)
        ax.set_title(f"{what}, {g}", fontsize=9)
        ax.set_xlabel("bits")
        ax.set_xticks(sorted(t.bits.unique()))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("SQNR (dB)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_histograms(tensors: dict[str, torch.Tensor], bits: int = 4, max_plots: int = 4, per_row: int = 2):
    """Value histograms (log counts) of the first tensors with each estimator's clip range."""
    import matplotlib.pyplot as plt

    # Both kinds: the first layers' weights and input activations.
    weights = [n for n in tensors if n.endswith(".weight")]
    acts = [n for n in tensors if not n.endswith(".weight")]
    half = max(1, max_plots // 2)
    names = (weights[:half] + acts[: max_plots - min(half, len(weights))])[:max_plots]
    rows = max(1, math.ceil(len(names) / per_row))
    fig, axes = plt.subplots(rows, per_row, figsize=(5.2 * per_row, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        x = tensors[name].flatten()
        ax.hist(x.numpy(), bins=100, color="0.6", log=True)
        for (est, (lo, hi)), color in zip(clip_ranges(x, bits, name.endswith(".weight")).items(), plt.cm.tab10.colors):
            ax.axvline(lo, color=color, lw=1)
            ax.axvline(hi, color=color, lw=1, label=est)
        ax.set_title(f"{tensor_title(name)} ({bits}-bit clip ranges)", fontsize=9)
        ax.set_xlabel("value")
        ax.set_ylabel("count (log scale)")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def refused_view(table: pd.DataFrame) -> Any:
    """One row per distinct reason an estimator refused a combination."""
    from .display import Table

    r = table[table.error.notna()][["tensor", "bits", "granularity", "estimator", "error"]].drop_duplicates("error")
    return Table(r.astype(str), empty="every estimator handled every combination")
