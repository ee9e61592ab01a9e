"""Hardware study: the trained integer models on the ASIC and FPGA simulators, the GPU
(measured only where a GPU and the CUDA kernels exist), and accuracy vs cost."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd


def trials_with_models(run_dir: str | Path, df: pd.DataFrame) -> list[tuple[dict[str, Any], Path]]:
    """(record, intmodel path) for every ok quantized trial whose IntModel was saved."""
    out = []
    for rec in df[(df.status == "ok") & (df.method != "fp32")].to_dict("records"):
        p = Path(run_dir) / "trials" / str(rec["trial_id"]) / "intmodel.pt"
        if p.exists():
            out.append((rec, p))
    return out


def asic(int_model: Any, rows: int = 32, cols: int = 32, dataflow: str = "ws", pack: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-layer records and totals of the systolic-array simulator."""
    from qatlab.hw.asic import ArrayConfig, simulate_intmodel

    # pack=0: as many sub-8-bit MACs per cell as the operand widths allow.
    cfg = ArrayConfig(rows=rows, cols=cols, dataflow=dataflow, pack=0 if pack else 1)
    rep = simulate_intmodel(int_model, cfg)
    return pd.DataFrame([r.as_dict() for r in rep.layers]), dict(rep.totals)


# What the study concludes about a design on a device.
FITS = "fits"
FITS_FULL = "fits only above FINN's utilization limits"
NO_FIT = "does not fit at any folding"


@dataclass(frozen=True)
class Overflow:
    """One resource a design needs more of than the device has."""

    resource: str  # lut | dsp | bram18 | uram
    used: int
    capacity: int

    @property
    def pct(self) -> float:
        return 100.0 * self.used / self.capacity if self.capacity else math.inf

    def __str__(self) -> str:
        return f"{self.resource.upper()} {self.used} of {self.capacity} ({self.pct:.0f}%, {self.used - self.capacity} over)"


@dataclass
class FpgaFit:
    """The FPGA design the study reports for one device, and whether it fits.

    ``verdict`` is :data:`FITS` (the fastest design within FINN's recommended
    utilization), :data:`FITS_FULL` (only when every resource may be used to the
    last block) or :data:`NO_FIT`; then ``layers``/``totals`` describe the smallest
    design tried and ``overflow`` says which resources it exceeds, by how much.
    """

    device: str
    verdict: str
    layers: pd.DataFrame
    totals: dict[str, Any]
    overflow: list[Overflow] = field(default_factory=list)
    message: str = ""

    @property
    def fits(self) -> bool:
        return self.verdict != NO_FIT


def overflows(totals: Mapping[str, Any], device: Any) -> list[Overflow]:
    """The resources of ``totals`` (an FPGA report's) above ``device``'s capacity."""
    from qatlab.hw.fpga.devices import RESOURCES

    return [Overflow(r, int(totals[r]), device.capacity(r)) for r in RESOURCES if int(totals[r]) > device.capacity(r)]


def _worst_ratio(totals: Mapping[str, Any], device: Any) -> float:
    from qatlab.hw.fpga.devices import RESOURCES

    return max((totals[r] / device.capacity(r) if device.capacity(r) else (math.inf if totals[r] else 0.0)) for r in RESOURCES)


def fpga_fit(int_model: Any, device: str = "ZCU104") -> FpgaFit:
    """The fastest design that fits ``device``; a design that fits nowhere is a finding, not an error.

    Tried in order, the first that fits wins: the folding search within FINN's
    utilization limits, the search over the whole device, then the smallest folding
    (PE = SIMD = 1 everywhere) with each kind of weight memory. When none fits, the
    smallest design closest to fitting is reported with its overflowing resources.
    An unknown device or a model the FPGA model cannot map still raises.
    """
    from qatlab.hw import fpga as f

    dev = f.get_device(device)
    tried: list[tuple[str, Any]] = []
    searched = ""
    for limits in (None, 1.0):
        try:
            rep = f.analyze_intmodel(int_model, dev, limits=limits)
        except f.DoesNotFitError as e:
            searched = f"the folding search (every PE, SIMD and weight memory per layer): {e}"
            continue
        if rep.totals["fits"]:
            verdict = FITS if limits is None else FITS_FULL
            d = rep.to_dict()
            msg = f"{verdict} {dev.name}: {d['totals']['explanation']}"
            return FpgaFit(dev.name, verdict, pd.DataFrame(d["layers"]), d["totals"], [], msg)
        tried.append(("the searched design", rep))
    # The search found nothing that fits; the slowest foldings are what is left to try.
    styles = ["block", "distributed"] + (["ultra"] if dev.uram else [])
    for style in styles:
        rep = f.analyze_intmodel(int_model, dev, folding={"*": f.LayerFolding(1, 1, ram_style=style)})
        if rep.totals["fits"]:
            d = rep.to_dict()
            msg = f"{FITS} {dev.name} only at its smallest folding (PE = SIMD = 1, weights in {style} RAM)"
            return FpgaFit(dev.name, FITS, pd.DataFrame(d["layers"]), d["totals"], [], msg)
        tried.append((f"the smallest folding (PE = SIMD = 1, weights in {style} RAM)", rep))
    # Every alternative is named: which memory kind overflows least is the user's lead.
    needs = "; ".join(f"{what} needs {', '.join(map(str, overflows(r.totals, dev)))}" for what, r in tried)
    _, rep = min(tried, key=lambda wr: _worst_ratio(wr[1].totals, dev))
    d = rep.to_dict()
    msg = f"does not fit {dev.name} at any folding: " + "; ".join(m for m in (searched, needs) if m)
    return FpgaFit(dev.name, NO_FIT, pd.DataFrame(d["layers"]), d["totals"], overflows(d["totals"], dev), msg)


def fpga(int_model: Any, device: str = "ZCU104") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-op folding, cycles and resources (every op a row) and the totals of :func:`fpga_fit`'s
    design; ``totals["fit"]`` is its verdict and ``totals["overflow"]`` what does not fit."""
    fit = fpga_fit(int_model, device)
    totals = {**fit.totals, "fit": fit.verdict, "overflow": "; ".join(map(str, fit.overflow)), "fit_message": fit.message}
    return fit.layers, totals


def gpu_status() -> str:
    """Why the GPU column is (not) measured."""
    import torch

    if not torch.cuda.is_available():
        return "not measured: no CUDA GPU on this machine"
    try:
        import qatlab.kernels  # noqa: F401
    except ImportError:
        return "not measured: the CUDA int8 kernels (qatlab.kernels) are not built yet"
    return "measured"


def cost_table(run_dir: str | Path, df: pd.DataFrame, device: str = "ZCU104", array: int = 32) -> pd.DataFrame:
    """One row per quantized trial: accuracy beside ASIC energy/latency and FPGA fps."""
    from qatlab.intmodel import IntModel

    rows = []
    for rec, path in trials_with_models(run_dir, df):
        im = IntModel.load(path)
        row = {k: rec.get(k) for k in ("trial_id", "method", "ste", "w_bits", "a_bits", "granularity", "test_acc", "int_acc")}
        try:
            _, t = asic(im, array, array)
            row.update(
                asic_energy_uj=t.get("energy_pj", float("nan")) / 1e6,
                asic_latency_us=1e6 * t.get("latency_s", float("nan")),
                asic_cycles=t.get("total_cycles"),
            )
        except Exception as e:  # a report shows the reason instead of dying
            row.update(asic_error=f"{type(e).__name__}: {e}")
        try:
            fit = fpga_fit(im, device)
            row.update(fpga_fps=fit.totals.get("fps") if fit.fits else None, fpga_fits=fit.fits, fpga_lut=fit.totals.get("lut"))
            if not fit.fits:
                row["fpga_overflow"] = "; ".join(map(str, fit.overflow))
        except Exception as e:
            row.update(fpga_error=f"{type(e).__name__}: {e}")
        row["gpu"] = gpu_status()
        rows.append(row)
    return pd.DataFrame(rows)


PARETO_AXES = {
    "asic_energy_uj": "ASIC energy per inference (µJ)",
    "asic_latency_us": "ASIC latency per inference (µs)",
    "fpga_lut": "FPGA LUTs",
}


def pareto_front(costs: pd.DataFrame, x: str = "asic_energy_uj") -> pd.DataFrame:
    """The points no other point beats on both ``x`` (lower) and test accuracy (higher)."""
    d = costs.dropna(subset=[x, "test_acc"]).sort_values([x, "test_acc"], ascending=[True, False])
    keep, best = [], -math.inf
    for i, r in d.iterrows():
        if float(r.test_acc) > best:
            keep.append(i)
            best = float(r.test_acc)
    return d.loc[keep]


def plot_pareto(costs: pd.DataFrame, x: str = "asic_energy_uj"):
    """Accuracy vs cost, each point named by its configuration; the Pareto front joined."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.set_xlabel(PARETO_AXES.get(x, x))
    ax.set_ylabel("test accuracy (%)")
    if costs.empty or x not in costs or costs[x].isna().all():
        ax.text(0.5, 0.5, "no quantized trials with integer models", ha="center", transform=ax.transAxes)
        return fig
    d = costs.dropna(subset=[x, "test_acc"])
    # Trials with the same cost and accuracy share one point and one label.
    groups = d.groupby([d[x].round(9), d["test_acc"].round(9)], sort=False)
    for (xv, acc), g in groups:
        label = " / ".join(dict.fromkeys(config_label(r) for r in g.to_dict("records")))
        ax.scatter([xv], [100 * acc], color="C0", zorder=3)
        ax.annotate(label, (xv, 100 * acc), xytext=(4, 4), textcoords="offset points", fontsize=7)
    f = pareto_front(d, x)
    if len(f) > 1:
        ax.plot(f[x], 100 * f.test_acc, color="C1", lw=1, label="Pareto front", zorder=2)
        ax.legend(fontsize=7, loc="lower right")
    ax.margins(x=0.25, y=0.15)
    ax.grid(alpha=0.3)
    ax.set_title("accuracy against ASIC cost", fontsize=9)
    fig.tight_layout()
    return fig


def best_model(run_dir: str | Path, df: pd.DataFrame) -> tuple[dict[str, Any], Any] | None:
    """(record, IntModel) of the most accurate quantized trial with a saved integer model."""
    from qatlab.intmodel import IntModel

    found = trials_with_models(run_dir, df)
    if not found:
        return None
    rec, path = max(found, key=lambda rp: rp[0]["test_acc"])
    return rec, IntModel.load(path)


def onnx_comparison(run_dir: str | Path, df: pd.DataFrame, limit_test: int | None = None) -> pd.DataFrame:
    """Fake-quant, IntModel and ONNX Runtime accuracy side by side, per quantized trial."""
    from qatlab.data import load_dataset
    from qatlab.export import build_onnx, compare_onnx
    from qatlab.intmodel import IntModel
    from qatlab.train import load_checkpoint

    rows = []
    for rec, path in trials_with_models(run_dir, df):
        row = {k: rec.get(k) for k in ("trial_id", "method", "ste", "w_bits", "a_bits")}
        try:
            im = IntModel.load(path)
            model, cfg, _ = load_checkpoint(path.with_name("model.pt"))
            x, y = load_dataset(cfg.dataset, limit_test=limit_test, seed=cfg.seed, loader_args=cfg.loader_args or None).test_tensors()
            c = compare_onnx(im, build_onnx(im).SerializeToString(), x, y, fake_quant=model, emulate=False)
            row.update(
                fake_quant_acc=c.fq_acc,
                intmodel_acc=c.int_acc,
                onnx_runtime_acc=c.ort_acc,
                ort_vs_intmodel_predictions=c.agreement,
                ort_vs_intmodel_codes=c.code_agreement,
            )
        except Exception as e:  # one trial's export problem is a row, not a dead report
            row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
    return pd.DataFrame(rows)


# ---- what the report shows ---------------------------------------------------------------
def config_label(rec: Mapping[str, Any]) -> str:
    """A trial as a reader names it: ``QAT lsq W4A4``, ``PTQ W8A8``, ``FP32``."""
    method = str(rec.get("method", "?"))
    if method == "fp32":
        return "FP32"
    ste = rec.get("ste")
    bits = f"W{int(rec['w_bits'])}A{int(rec['a_bits'])}" if _is_num(rec.get("w_bits")) and _is_num(rec.get("a_bits")) else ""
    parts = [method.upper(), str(ste) if method == "qat" and isinstance(ste, str) and ste not in ("", "-") else "", bits]
    return " ".join(p for p in parts if p)


def _is_num(v: Any) -> bool:
    try:
        return not math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def layer_names(int_model: Any) -> dict[str, str]:
    """Op name -> the name a report gives it: the model's module name and the op's kind
    (``9 (linear)``, ``features.3 (conv)``); ops of no module keep their graph name."""
    out = {}
    for op in int_model.ops:
        module = op.attrs.get("module")
        out[op.name] = f"{module} ({op.kind})" if module else f"{op.name} ({op.kind})"
    return out


def rename_layers(layers: pd.DataFrame, names: Mapping[str, str]) -> pd.DataFrame:
    """``layers`` with its ``layer`` column in the model's names (a grouped conv's
    ``<op>.g<i>`` rows keep their group suffix)."""
    if layers.empty or "layer" not in layers:
        return layers
    out = layers.copy()

    def one(name: Any) -> Any:
        s = str(name)
        if s in names:
            return names[s]
        base, dot, rest = s.partition(".")
        return f"{names[base]} .{rest}" if dot and base in names else name

    out["layer"] = out["layer"].map(one)
    return out


def rename_in_text(text: str, names: Mapping[str, str]) -> str:
    """Op names inside a message (``bottleneck _0.swu``) in the model's names."""
    import re

    if not names:
        return text
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")(?![\w])")
    return pattern.sub(lambda m: names[m.group(1)], text)


COST_KEY = [
    "configuration",
    "test accuracy (%)",
    "IntModel accuracy (%)",
    "ASIC energy (µJ)",
    "ASIC latency (µs)",
    "FPGA (frames/s)",
    "FPGA LUTs",
]


def cost_view(costs: pd.DataFrame) -> Any:
    """The cost table as the report shows it: one line per trial, units in the headers,
    the key columns up front and every column behind ``<details>``."""
    from .display import Table, format_frame

    if costs.empty:
        return Table(costs, empty="no quantized trial with an integer model in this run")
    d = pd.DataFrame({"configuration": [config_label(r) for r in costs.to_dict("records")]})
    d["test accuracy (%)"] = 100 * costs["test_acc"].astype(float).values
    d["IntModel accuracy (%)"] = 100 * costs["int_acc"].astype(float).values if "int_acc" in costs else math.nan
    for col, label in (("asic_energy_uj", "ASIC energy (µJ)"), ("asic_latency_us", "ASIC latency (µs)"), ("asic_cycles", "ASIC cycles")):
        d[label] = costs[col].values if col in costs else math.nan
    if "fpga_fits" in costs:
        d["FPGA (frames/s)"] = [
            (fps if fits else "does not fit") for fps, fits in zip(costs.get("fpga_fps", [None] * len(costs)), costs["fpga_fits"])
        ]
    d["FPGA LUTs"] = costs["fpga_lut"].values if "fpga_lut" in costs else math.nan
    for col in ("fpga_overflow", "asic_error", "fpga_error", "trial_id", "granularity"):
        if col in costs:
            d[col.replace("_", " ")] = costs[col].values
    pct = ["test accuracy (%)", "IntModel accuracy (%)"]
    return Table(format_frame(d, percent=pct, keep=["configuration", "trial id", "granularity"]), key=COST_KEY)


def asic_layer_view(layers: pd.DataFrame) -> Any:
    from .display import Table, format_frame

    if layers.empty:
        return Table(layers)
    d = layers.copy()
    total = float(d["total_cycles"].sum()) or 1.0
    d.insert(1, "share of cycles (%)", 100 * d["total_cycles"] / total)
    d.insert(2, "energy (nJ)", d["energy_pj"] / 1e3)
    d = d.rename(columns={"cycles": "cycles (qatlab count)"}).rename(
        columns={"op_kind": "kind", "total_cycles": "cycles", "overall_util_pct": "utilization (%)"}
    )
    key = ["layer", "kind", "cycles", "share of cycles (%)", "utilization (%)", "energy (nJ)"]
    return Table(format_frame(d, keep=["layer", "kind", "unit"]), key=key, caption="ASIC, per layer")


def fpga_layer_view(layers: pd.DataFrame) -> Any:
    from .display import Table, format_frame

    if layers.empty:
        return Table(layers)
    key = ["layer", "kind", "pe", "simd", "cycles", "lut", "dsp", "bram18", "bottleneck"]
    return Table(format_frame(layers, keep=["layer", "kind", "unit", "impl", "ram_style"]), key=key, caption="FPGA, per layer")


def fpga_need(fit: FpgaFit) -> str:
    """The one-line verdict a figure carries: ``fits ZCU104 (LUT 27 %)`` or ``needs 114 %
    of PYNQ-Z1's BRAM18``."""
    if fit.fits:
        from qatlab.hw.fpga.devices import RESOURCES, get_device

        dev = get_device(fit.device)
        worst = max(RESOURCES, key=lambda r: _share(fit.totals.get(r, 0), dev.capacity(r)))
        return f"fits {fit.device} (most used: {worst.upper()} at {_share(fit.totals.get(worst, 0), dev.capacity(worst)):.0f} %)"
    worst_o = max(fit.overflow, key=lambda o: o.pct)
    return f"needs {worst_o.pct:.0f} % of {fit.device}'s {worst_o.resource.upper()}"


def _share(used: Any, capacity: int) -> float:
    used = float(used or 0)
    return 100.0 * used / capacity if capacity else (math.inf if used else 0.0)


def plot_fpga_resources(fit: FpgaFit, label: str = ""):
    """The design's LUT/DSP/BRAM18/URAM as % of the device, the device's 100 % marked;
    the title says whether it fits and, if not, what it needs."""
    import matplotlib.pyplot as plt

    from qatlab.hw.fpga.devices import RESOURCES, get_device

    dev = get_device(fit.device)
    res = [r for r in RESOURCES if dev.capacity(r) or fit.totals.get(r)]
    shares = [_share(fit.totals.get(r, 0), dev.capacity(r)) for r in res]
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    shown = [min(s, 400.0) for s in shares]  # an unbounded bar (a resource the device lacks) is clipped, its label says ∞
    colors = ["tab:red" if s > 100 else "tab:blue" for s in shares]
    bars = ax.bar([r.upper() for r in res], shown, color=colors)
    for b, s in zip(bars, shares):
        ax.annotate(
            "∞" if math.isinf(s) else f"{s:.0f} %", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8
        )
    ax.axhline(100, color="k", ls="--", lw=1, label=f"{fit.device} capacity")
    ax.set_ylabel(f"share of {fit.device} (%)")
    ax.set_xlabel("FPGA resource")
    ax.set_ylim(0, max(110.0, max(shown, default=0) * 1.15))
    ax.set_title(f"{label + ': ' if label else ''}{fpga_need(fit)}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_layer_cycles(layers: pd.DataFrame, label: str = ""):
    """ASIC cycles per layer (bars) and the array's utilization (dots): where the time goes."""
    import matplotlib.pyplot as plt

    d = layers[layers["total_cycles"] > 0]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(d["layer"].astype(str), d["total_cycles"], color="tab:blue", label="cycles")
    ax.set_ylabel("cycles per inference")
    ax.set_xlabel("layer (module, kind)")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax2 = ax.twinx()
    ax2.plot(d["layer"].astype(str), d["overall_util_pct"], "o", color="tab:orange", label="array utilization")
    ax2.set_ylabel("array utilization (%)")
    ax2.set_ylim(0, 100)
    ax.set_title(f"ASIC cycles per layer{' — ' + label if label else ''}", fontsize=9)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def _per_bits(costs: pd.DataFrame, col: str, how: str = "min") -> dict[tuple[int, int], float]:
    d = costs.dropna(subset=[col]) if col in costs else costs.iloc[0:0]
    return {(int(w), int(a)): float(getattr(g[col].astype(float), how)()) for (w, a), g in d.groupby(["w_bits", "a_bits"])}


def bottleneck(layers: pd.DataFrame) -> dict[str, Any] | None:
    """The layer that takes the most ASIC cycles: its name, share of cycles (%) and utilization (%)."""
    if layers.empty or layers["total_cycles"].sum() <= 0:
        return None
    r = layers.loc[layers["total_cycles"].idxmax()]
    return {
        "layer": str(r["layer"]),
        "share_pct": 100.0 * float(r["total_cycles"]) / float(layers["total_cycles"].sum()),
        "util_pct": float(r["overall_util_pct"]),
    }


def key_findings(
    costs: pd.DataFrame, asic_layers: pd.DataFrame | None = None, fit: FpgaFit | None = None, best_label: str = ""
) -> list[str]:
    """Sentences with this run's numbers: best accuracy per bit width and its cost, what
    fewer bits save on the ASIC and the FPGA, the bottleneck layer, the FPGA verdict."""
    from .display import pct, sig3

    out: list[str] = []
    if costs.empty:
        return ["no quantized trial with an integer model in this run: nothing to cost"]
    for (w, a), g in sorted(costs.groupby(["w_bits", "a_bits"]), key=lambda kv: -kv[0][0]):
        r = g.loc[g["test_acc"].astype(float).idxmax()]
        energy = f", {sig3(r['asic_energy_uj'])} µJ per inference on the ASIC" if _is_num(r.get("asic_energy_uj")) else ""
        out.append(f"Best at W{int(w)}A{int(a)}: {config_label(r)}, {pct(100 * float(r['test_acc']))} % test accuracy{energy}.")
    energy, luts, fps = _per_bits(costs, "asic_energy_uj"), _per_bits(costs, "fpga_lut"), _per_bits(costs, "fpga_fps", "max")
    ref = (8, 8)
    for bits in sorted(energy, reverse=True):
        if bits == ref or ref not in energy:
            continue
        tag = f"W{bits[0]}A{bits[1]}"
        text = f"{tag} uses {100 * energy[bits] / energy[ref]:.0f} % of W8A8's ASIC energy ({sig3(energy[bits])} vs {sig3(energy[ref])} µJ)"
        if bits in luts and ref in luts and luts[ref]:
            text += f"; on the FPGA {100 * luts[bits] / luts[ref]:.0f} % of its LUTs ({sig3(luts[bits])} vs {sig3(luts[ref])})"
            if bits in fps and ref in fps and fps[ref]:
                # The folding search spends the budget on speed: LUTs alone would hide what fewer bits buy.
                text += f" at {sig3(fps[bits] / fps[ref])}× its frame rate ({sig3(fps[bits])} vs {sig3(fps[ref])} frames/s)"
        out.append(text + ".")
    if asic_layers is not None:
        b = bottleneck(asic_layers)
        if b:
            who = f" of {best_label}" if best_label else ""
            out.append(
                f"On the ASIC{who}, layer {b['layer']} runs at {sig3(b['util_pct'])} % array utilization and takes {b['share_pct']:.0f} % of the cycles."
            )
    if fit is not None:
        who = f"{best_label} " if best_label else ""
        if fit.fits:
            fps = fit.totals.get("fps")
            out.append(f"FPGA: the {who}design {fpga_need(fit)}" + (f", {sig3(fps)} frames/s." if _is_num(fps) else "."))
        else:
            out.append(f"FPGA: the {who}design does not fit: it {fpga_need(fit)}.")
    return out


# ---- the page's pieces, each usable when another failed ----------------------------------
def best_asic(best: tuple[dict[str, Any], Any] | None, array: int = 32) -> pd.DataFrame:
    """Per-layer ASIC records of the most accurate integer model, layers in the model's names."""
    if not isinstance(best, tuple):
        raise ValueError("no quantized trial with an integer model in this run")
    _, im = best
    layers, _ = asic(im, array, array)
    return rename_layers(layers, layer_names(im))


def best_fpga(best: tuple[dict[str, Any], Any] | None, device: str = "ZCU104") -> FpgaFit:
    """:func:`fpga_fit` of the most accurate integer model, layers in the model's names."""
    if not isinstance(best, tuple):
        raise ValueError("no quantized trial with an integer model in this run")
    _, im = best
    fit = fpga_fit(im, device)
    names = layer_names(im)
    fit.layers = rename_layers(fit.layers, names)
    fit.message = rename_in_text(fit.message, names)
    return fit


def page_findings(costs: Any, best: Any, asic_layers: Any, fit: Any) -> list[str]:
    """:func:`key_findings` from whatever parts of the page could be computed (a part
    that failed is left out, and said so)."""
    missing = [
        what
        for what, v, t in (("costs", costs, pd.DataFrame), ("ASIC layers", asic_layers, pd.DataFrame), ("FPGA design", fit, FpgaFit))
        if not isinstance(v, t)
    ]
    label = config_label(best[0]) if isinstance(best, tuple) else ""
    out = key_findings(
        costs if isinstance(costs, pd.DataFrame) else pd.DataFrame(),
        asic_layers if isinstance(asic_layers, pd.DataFrame) else None,
        fit if isinstance(fit, FpgaFit) else None,
        label,
    )
    if missing and isinstance(best, tuple):
        out.append(f"Not available (see below): {', '.join(missing)}.")
    out.append(f"GPU: {gpu_status()}.")
    return out


def per_layer_section(asic_layers: Any, fit: Any) -> Any:
    from .display import Group, Note

    parts: list[Any] = []
    if isinstance(asic_layers, pd.DataFrame):
        parts.append(asic_layer_view(asic_layers))
    if isinstance(fit, FpgaFit):
        parts += [fpga_layer_view(fit.layers), Note(f"FPGA ({fit.device}): {fit.message}")]
    return Group(parts)


def onnx_view(table: pd.DataFrame) -> Any:
    """:func:`onnx_comparison` in % (2 decimals), one line per trial."""
    from .display import Table, format_frame

    if table.empty:
        return Table(table, empty="no quantized trial with an integer model in this run")
    d = table.copy()
    d.insert(0, "configuration", [config_label(r) for r in d.to_dict("records")])
    cols = {
        "fake_quant_acc": "fake-quant accuracy (%)",
        "intmodel_acc": "IntModel accuracy (%)",
        "onnx_runtime_acc": "ONNX Runtime accuracy (%)",
        "ort_vs_intmodel_predictions": "ORT = IntModel predictions (%)",
        "ort_vs_intmodel_codes": "ORT = IntModel codes (%)",
    }
    for c in cols:
        if c in d:
            d[c] = 100 * d[c].astype(float)
    d = d.drop(columns=[c for c in ("method", "ste", "w_bits", "a_bits") if c in d]).rename(columns=cols)
    return Table(format_frame(d, percent=list(cols.values()), keep=["configuration", "trial_id", "error"]))
