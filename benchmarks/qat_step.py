"""QAT training step time: ours vs torch.ao's QAT vs the FP32 step (ratios, same run).

    python benchmarks/qat_step.py [--model lenet|resnet8|mobilenet] [--batch 128] [--repeats 64]
                                  [--threads N] [--recipes lsq,clipped,lsq_mse,pact_mse,clipped_mse]
                                  [--torch-ops] [--skip-search] [--clock wall|cpu] [--json out.json]

One step = forward + cross-entropy + backward + Adam step (``qatlab.train.make_optimizer``,
the training loop's own) on a fixed batch, timed
round-robin (interleaved) after a calibration pass. Each recipe is timed in both QAT
phases: ``live`` (observers on, BN batch statistics: the steps before the freeze) and
``frozen`` (after ``freeze_bn`` + observers off). The recipes are the trials'
(``qatlab.train.specs``): ``lsq`` / ``clipped`` are W8A8 with min/max ranges (EMA for
activations); the ``*_mse`` ones are W4A4 with MSE-optimal ranges and 8-bit first/last
layers, the low-bit recipe of benchmarks/accuracy.py.

Reported per model: median and mean ms of each step, and each one's median and mean as a
ratio to FP32's and to torch.ao's QAT step (its default x86 qconfig, observers live).
Recipes with a search estimator (``mse``) run it on one step in ``refresh_every``
(``qatlab.nn.fake_quant``) and track the range by min/max in between; their
``*_live_search`` step is the same model searching on every step (``refresh_every=1``,
what every step cost before), and ``amortised`` = live + (search − live) / refresh_every
is the mean step cost over a whole refresh period. ``--skip-search`` leaves those rows
out (a search step of ``pact_mse`` on the MobileNet-style model takes seconds).

The quantizers run on the fused CPU kernels (``qatlab.nn.fused``) where they are
available; ``--torch-ops`` also times each recipe's live and frozen steps on the
torch-op path (``torchops_*`` rows, the same models with the kernels switched off), so
the two compare within one run. ``QATLAB_FUSED=0`` times only the torch-op path.

``--clock cpu`` times each step by the process's CPU time instead of the wall clock: on a
shared machine the time spent waiting for a core then stays out of the figures (cache and
memory-bandwidth contention from other jobs still count). Run with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import torch_ao_freeze, torch_ao_qat

from qatlab.atomic import write_json
from qatlab.config import TrainConfig
from qatlab.models import MODELS, build_model
from qatlab.nn import calibrate, freeze_bn, prepare_qat, set_observe
from qatlab.nn.fake_quant import DEFAULT_REFRESH_EVERY, set_refresh_every
from qatlab.nn.fused import enabled as fused_enabled
from qatlab.nn.fused import fused_disabled, load_error
from qatlab.timing import interleaved_samples, load_average, machine
from qatlab.train import make_optimizer, specs

LOW = {"w_bits": 4, "a_bits": 4, "estimator": "mse", "first_last_bits": 8}
RECIPES: dict[str, dict[str, object]] = {
    "lsq": {"ste": "lsq"},
    "clipped": {"ste": "clipped"},
    "lsq_mse": {"ste": "lsq", **LOW},
    "pact_mse": {"ste": "pact", **LOW},
    "clipped_mse": {"ste": "clipped", **LOW},
}


TORCH_OPS = "torchops_"


def build_steps(
    model_name: str, batch: int, recipes: list[str], calib_batches: int = 4, torch_ops: bool = False, search: bool = True
) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    fp32 = build_model(model_name, 10, (1, 28, 28))
    models: dict[str, torch.nn.Module] = {"fp32": fp32}
    for r in recipes:
        cfg = TrainConfig(model=model_name, method="qat", granularity="channel", **RECIPES[r])  # type: ignore[arg-type]
        w_spec, a_spec = specs(cfg)
        phases = ["live", "frozen"] + (["live_search"] if cfg.estimator == "mse" and search else [])
        for phase in phases:
            q = prepare_qat(fp32, w_spec, a_spec, cfg.ste, first_last_bits=cfg.first_last_bits)
            calibrate(q, [x] * calib_batches)
            if phase.startswith("live"):
                set_observe(q, True)  # QAT keeps observing until the freeze
            else:
                freeze_bn(q)
                set_observe(q, False)
            if phase == "live_search":
                set_refresh_every(q, 1)
            models[f"{r}_{phase}"] = q
            if torch_ops and phase != "live_search":
                models[f"{TORCH_OPS}{r}_{phase}"] = copy.deepcopy(q)
    models["torch_ao_live"] = torch_ao_qat(fp32, x)
    models["torch_ao_frozen"] = torch_ao_qat(fp32, x)
    torch_ao_freeze(models["torch_ao_frozen"])
    steps: dict[str, Callable[[], None]] = {}
    for name, m in models.items():
        m.train()
        opt = make_optimizer([p for p in m.parameters() if p.requires_grad], lr=1e-4)

        def step(m: torch.nn.Module = m, opt: torch.optim.Optimizer = opt) -> None:
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if name.startswith(TORCH_OPS):

            def step(inner: Callable[[], None] = step) -> None:
                with fused_disabled():
                    inner()

        steps[name] = step
    return steps


def summarize(model_name: str, batch: int, samples: dict[str, list[float]]) -> dict[str, object]:
    med = {k: statistics.median(v) for k, v in samples.items()}
    mean = {k: statistics.fmean(v) for k, v in samples.items()}
    row: dict[str, object] = {"model": model_name, "batch": batch, "repeats": len(samples["fp32"])}
    for k in samples:
        row[f"{k}_ms"] = round(med[k] * 1e3, 2)
        row[f"{k}_mean_ms"] = round(mean[k] * 1e3, 2)
    for k in samples:
        if k == "fp32":
            continue
        phase = "frozen" if k.endswith("_frozen") else "live"
        row[f"{k}_vs_fp32"] = round(med[k] / med["fp32"], 3)
        row[f"{k}_vs_fp32_mean"] = round(mean[k] / mean["fp32"], 3)
        if not k.startswith("torch_ao"):
            row[f"{k}_vs_torch_ao"] = round(med[k] / med[f"torch_ao_{phase}"], 3)
    for k in samples:
        if k.endswith("_live_search"):
            live = k[: -len("_search")]
            amortised = med[live] + (med[k] - med[live]) / DEFAULT_REFRESH_EVERY
            row[f"{live}_amortised_ms"] = round(amortised * 1e3, 2)
            row[f"{live}_amortised_vs_fp32"] = round(amortised / med["fp32"], 3)
            row[f"{k}_over_live"] = round(med[k] / med[live], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="lenet", choices=MODELS)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {', '.join(RECIPES)}")
    ap.add_argument("--torch-ops", action="store_true", help="also time each recipe on the torch-op path (torchops_* rows)")
    ap.add_argument("--skip-search", action="store_true", help="leave out the *_live_search rows (searching on every step)")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time each step by the wall clock, or by the process's CPU time (on a shared machine: "
        "waiting for a core then does not count, which keeps ratios meaningful under load)",
    )
    ap.add_argument("--json", default=None, help="also write the row (and machine) here")
    a = ap.parse_args()
    recipes = [r for r in a.recipes.split(",") if r]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        ap.error(f"--recipes: unknown {', '.join(unknown)}; expected from {', '.join(RECIPES)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    steps = build_steps(a.model, a.batch, recipes, torch_ops=a.torch_ops, search=not a.skip_search)
    load_start = load_average()
    row = summarize(a.model, a.batch, interleaved_samples(steps, a.repeats, warmup=3, clock=a.clock))
    row["clock"] = a.clock
    row["fused_kernels"] = fused_enabled()
    # The VM is shared: the load around the timed steps says how far to trust them.
    row["load_average_1min"] = [load_start, load_average()]
    print(json.dumps({"machine": machine()}))
    print(f"fused kernels: {'on' if row['fused_kernels'] else 'off (' + (load_error() or 'QATLAB_FUSED=0') + ')'}")
    print(json.dumps(row))
    print(f"\n{a.model}, batch {a.batch}, {row['repeats']} interleaved steps each ({a.clock} clock); FP32 {row['fp32_ms']} ms")
    print(f"load average (1 min) before / after the timed steps: {row['load_average_1min'][0]} / {row['load_average_1min'][1]}")
    print(f"{'step':22} {'median ms':>10} {'mean ms':>9} {'× FP32':>7} {'× FP32 (mean)':>14} {'× torch.ao':>11}")
    for k in [k[: -len("_ms")] for k in row if k.endswith("_ms") and not k.endswith(("_mean_ms", "_amortised_ms"))]:
        if k == "fp32":
            continue
        vs_ao = row.get(f"{k}_vs_torch_ao", "-")
        print(f"{k:22} {row[k + '_ms']:>10} {row[k + '_mean_ms']:>9} {row[k + '_vs_fp32']:>7} {row[k + '_vs_fp32_mean']:>14} {vs_ao:>11}")
    for k in [k for k in row if k.endswith("_amortised_ms")]:
        live = k[: -len("_amortised_ms")]
        print(
            f"{live}: amortised over {DEFAULT_REFRESH_EVERY} steps {row[k]} ms = {row[live + '_amortised_vs_fp32']} × FP32 (a search step: {row[live + '_search_over_live']} × a tracking step)"
        )
    if a.json:
        write_json(a.json, {"machine": machine(), "row": row})


if __name__ == "__main__":
    main()
