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


def plot_pareto(costs: pd.DataFrame, x: str = "asic_energy_uj"):
    """Accuracy vs cost; the Pareto front (no other point both cheaper and more accurate) joined."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if costs.empty or x not in costs:
        ax.text(0.5, 0.5, "no quantized trials with integer models", ha="center", transform=ax.transAxes)
        return fig
    d = costs.dropna(subset=[x, "test_acc"]).sort_values(x)
    for _, r in d.iterrows():
        ax.scatter(r[x], 100 * r.test_acc, color="C0")
        ax.annotate(f"{r.method} W{r.w_bits}A{r.a_bits} {r.ste}", (r[x], 100 * r.test_acc), fontsize=7)
    front, best = [], -1.0
    for _, r in d.iterrows():
        if r.test_acc > best:
            front.append(r)
            best = r.test_acc
    if front:
        f = pd.DataFrame(front)
        ax.plot(f[x], 100 * f.test_acc, color="C1", lw=1, label="Pareto front")
        ax.legend(fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
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
