"""Quantizer study: reconstruction error of every granularity × estimator × bits on a
trained model's real weights and activations, and the half-range erratum's cost."""

from __future__ import annotations

import math
from typing import Iterable

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


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean SQNR (dB) over tensors, by kind × bits × granularity × estimator (standard rule)."""
    t = table[table.scale_rule == "standard"]
    return t.pivot_table(index=["kind", "bits", "granularity"], columns="estimator", values="sqnr_db", aggfunc="mean").round(2)


def halfrange_cost(table: pd.DataFrame) -> pd.DataFrame:
    """SQNR lost to the half-range erratum (standard − halfrange), minmax, by kind × bits × granularity."""
    t = table[table.estimator == "minmax"].pivot_table(
        index=["kind", "bits", "granularity"], columns="scale_rule", values="sqnr_db", aggfunc="mean"
    )
    t["loss_db"] = t["standard"] - t["halfrange"]
    return t.round(2)


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


def plot_sqnr_vs_bits(table: pd.DataFrame, kind: str = "weight"):
    import matplotlib.pyplot as plt

    t = table[(table.kind == kind) & (table.scale_rule == "standard")]
    grans = list(dict.fromkeys(t.granularity))
    fig, axes = plt.subplots(1, len(grans), figsize=(4 * len(grans), 3.2), sharey=True, squeeze=False)
    for ax, g in zip(axes[0], grans):
        for est, d in t[t.granularity == g].groupby("estimator"):
            m = d.groupby("bits").sqnr_db.mean()
            ax.plot(m.index, m.values, marker="o", label=est)
        ax.set_title(f"{kind}s, {g}")
        ax.set_xlabel("bits")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("SQNR (dB)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_histograms(tensors: dict[str, torch.Tensor], bits: int = 4, max_plots: int = 4):
    import matplotlib.pyplot as plt

    names = list(tensors)[:max_plots]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        x = tensors[name].flatten()
        ax.hist(x.numpy(), bins=100, color="0.6", log=True)
        for (est, (lo, hi)), color in zip(clip_ranges(x, bits, name.endswith(".weight")).items(), plt.cm.tab10.colors):
            ax.axvline(lo, color=color, lw=1)
            ax.axvline(hi, color=color, lw=1, label=est)
        ax.set_title(f"{name} ({bits}-bit clip ranges)", fontsize=9)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig
