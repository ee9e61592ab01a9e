"""Mixed precision: search speed, Hessian-sensitivity speed, and accuracy at equal energy.

    python benchmarks/mixed_precision.py speed                       # ILP (50 layers) + Hessian (MobileNet)
    python benchmarks/mixed_precision.py accuracy --model lenet --profile quick
    python benchmarks/mixed_precision.py accuracy --model mobilenet --profile quick --json mb.json
    python benchmarks/mixed_precision.py accuracy --model lenet --free-ends --out runs/mixed-free

``speed``: the ILP for a 50-layer chain CNN with 3x3 (w_bits, a_bits) choices per layer
(real per-op ASIC cost tables, synthetic sensitivities), against brute force on a
5-layer piece of it (the baseline, timed in the same run); then the ``hessian``
sensitivity of the MobileNet-style model (one calibration batch of 128, default
options), against one FP32 training step on the same batch.

``accuracy``: uniform QAT at W8A8/W4A4/W2A2 (first and last layers at 8 bits, MSE
ranges, LSQ: the accuracy benchmark's recipe), then mixed QAT at the ASIC energy of
uniform W4A4 and of uniform W2A2 (as the simulators price those trained models) and
at 0.5 x W8A8. Prints the table and PASS/FAIL per target:

* at W4A4's energy, mixed accuracy >= uniform W4A4's (and its simulated energy at most the
  trained uniform model's: the tables may price uniform W4A4 otherwise, see BENCHMARKS.md);
* at W2A2's energy, mixed >= W2A2 + 0.5 points, or within 0.3 of FP32 (the lower bar);
* no uniform point dominates a mixed one (at most its energy and strictly more accurate).

``--free-ends`` lets the search choose the first and last layers' bits too (the
uniform trials and the budgets stay those of the pinned uniform networks): with the
ends pinned, uniform W2A2 is the cheapest configuration there is, so at its energy the
search can only return it. A mixed configuration whose bits equal a trained trial's
(a uniform one, or another budget's) is not trained again: its row is that trial's,
with ``same_as`` naming it. A budget nothing meets is recorded in ``plan.json`` (with
the cheapest reachable value) instead of stopping the plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qatlab.atomic import write_json
from qatlab.config import TrainConfig, profile
from qatlab.hw.asic import ArrayConfig
from qatlab.intmodel import IntModel, convert
from qatlab.mixed import (
    Budget,
    Factor,
    InfeasibleBudgetError,
    Problem,
    brute_force,
    cost_tables,
    decision_space,
    methods,
    plan,
    search,
    simulate_costs,
    solve,
)
from qatlab.mixed.hessian import hessian_sensitivity
from qatlab.mixed.sensitivity import SensitivityData, SensitivityInput
from qatlab.models import build_model
from qatlab.nn import calibrate, prepare_qat
from qatlab.quant import QuantSpec
from qatlab.timing import machine, median_time
from qatlab.train import run_trial

W = QuantSpec(bits=8, symmetric=True, granularity="channel", axis=0)
A = QuantSpec(bits=8, symmetric=False)


# ---- speed -----------------------------------------------------------------------------


def chain_cnn(layers: int, width: int = 16) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
    for _ in range(layers - 2):
        mods += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    mods += [nn.Flatten(), nn.Linear(width * 8 * 8, 10)]
    return nn.Sequential(*mods)


def synthetic_sensitivity(space, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    table = {}
    for s in space.layers:
        k = rng.uniform(0.2, 5.0)
        table[s.name] = {(w, a): k * (4.0**-w + 0.5 * 4.0**-a) for w in space.knobs[s.w_knob].domain for a in space.knobs[s.a_knob].domain}
    for q in space.acts:  # quantizers feeding no layer (here the logits)
        table[q.key] = {(0, a): rng.uniform(0.2, 5.0) * 0.5 * 4.0**-a for a in space.knobs[q.knob].domain}
    return table


def bench_search(repeats: int) -> dict:
    torch.manual_seed(0)
    net = chain_cnn(50).eval()
    q = prepare_qat(net, W, A, "lsq")
    calibrate(q, [torch.rand(8, 1, 8, 8) for _ in range(2)])
    im = convert(q.eval(), (1, 8, 8))
    space = decision_space(q, (2, 4, 8))
    t0 = time.perf_counter()
    tables = cost_tables(im, space, ArrayConfig())
    tables_s = time.perf_counter() - t0
    sens = synthetic_sensitivity(space)
    from qatlab.mixed import with_sensitivity

    problem = with_sensitivity(tables, sens)
    runs = {}
    for frac in (0.45, 0.6, 0.8):
        b = Budget("asic_energy", frac, relative=True)
        runs[frac] = median_time(lambda b=b: search(tables, sens, b, problem), repeats)
    # Baseline: brute force against the ILP on a 5-layer piece (first 5 layers' factors).
    keep = {s.op for s in space.layers[:5]}
    knobs = sorted({k for s in space.layers[:5] for k in (s.w_knob, s.a_knob)})
    remap = {k: i for i, k in enumerate(knobs)}
    facs = [Factor(f.name, tuple(remap[k] for k in f.scope), f.configs, f.sens, f.sums, f.maxes) for f in problem.factors if f.name in keep]
    small = Problem(tuple(problem.domains[k] for k in knobs), tuple(facs))
    full8 = small.evaluate(tuple(8 for _ in knobs))[1]["asic_energy_pj"]
    lim = {"asic_energy_pj": 0.5 * full8}
    t0 = time.perf_counter()
    ref = brute_force(small, lim)
    brute_s = time.perf_counter() - t0
    ilp_small = median_time(lambda: solve(small, lim), repeats)
    assert ref is not None and abs(solve(small, lim).sensitivity - ref[1]) < 1e-9
    return {
        "layers": len(space.layers),
        "knobs": len(space.knobs),
        "choices_per_layer": 9,
        "cost_tables_s": tables_s,
        "ilp_median_s": runs,
        "brute_force_5_layers_s": brute_s,
        "brute_force_5_layers_configs": int(np.prod([len(d) for d in small.domains])),
        "ilp_5_layers_s": ilp_small,
    }


def bench_hessian(repeats: int) -> dict:
    torch.manual_seed(0)
    m = build_model("mobilenet").eval()
    q = prepare_qat(m, W, A, "lsq")
    space = decision_space(q, (2, 4, 8))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    data = SensitivityData([(x, y)], (x[:16], y[:16]))
    inp = SensitivityInput(m, q, space, W, A, "lsq", data, {"batches": 1, "samples": 8, "batch": 64})

    def step() -> None:
        m.train()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        m.zero_grad(set_to_none=True)
        m.eval()

    step_s = median_time(step, repeats)
    t0 = time.perf_counter()
    hessian_sensitivity(inp)
    hess_s = time.perf_counter() - t0
    return {"layers": len(space.layers), "hessian_s": hess_s, "fp32_step_s": step_s, "ratio": hess_s / step_s, "samples": 8, "batch": 64}


# ---- accuracy --------------------------------------------------------------------------

LOW = {"first_last_bits": 8, "estimator": "mse", "ste": "lsq", "method": "qat"}


def _trial(cfg: TrainConfig, out: Path, name: str, asic: ArrayConfig) -> dict:
    t0 = time.perf_counter()
    rec = run_trial(cfg, out / name)
    if rec["status"] != "ok":
        raise RuntimeError(f"trial {name} failed:\n{rec['error']}")
    write_json(out / name / "record.json", {k: v for k, v in rec.items() if k in ("test_acc", "int_acc", "fp32_acc", "train_s")})
    return _row(out, name, rec, asic, t0)


def _rescore(out: Path, name: str) -> dict:
    """The row of a trained trial from its saved files (its record, or the models re-evaluated)."""
    from qatlab.data import load_dataset
    from qatlab.intmodel import predict
    from qatlab.train import accuracy, evaluate, load_checkpoint, pretrain_fp32

    t0 = time.perf_counter()
    saved = out / name / "record.json"
    if saved.exists():
        return _row(out, name, json.loads(saved.read_text()), ArrayConfig(), t0)
    model, cfg, _ = load_checkpoint(out / name / "model.pt")
    splits = load_dataset(cfg.dataset, val_fraction=cfg.val_fraction, limit_train=cfg.limit_train, limit_test=cfg.limit_test, seed=cfg.seed)
    dev = torch.device("cpu")
    pred, y = evaluate(model, splits.test, dev)
    fp32, _ = pretrain_fp32(cfg, splits, dev)
    im = IntModel.load(out / name / "intmodel.pt")
    rec = {
        "test_acc": accuracy(pred, y),
        "int_acc": accuracy(predict(im, splits.test.tensors[0]), y),
        "fp32_acc": accuracy(*evaluate(fp32, splits.test, dev)),
    }
    write_json(saved, rec)
    return _row(out, name, rec, ArrayConfig(), t0)


def _row(out: Path, name: str, rec: dict, asic: ArrayConfig, t0: float) -> dict:
    im = IntModel.load(out / name / "intmodel.pt")
    cost = simulate_costs(im, asic)
    row = {
        "name": name,
        "test_acc": rec["test_acc"],
        "int_acc": rec["int_acc"],
        "fp32_acc": rec["fp32_acc"],
        "energy_uj": cost["asic_energy_pj"] / 1e6,
        "cycles": cost["asic_cycles"],
        "weight_bytes": cost["weight_bytes"],
        "layer_bits": {op.name: [op.attrs["w_bits"], op.attrs["a_bits"]] for op in im.compute_ops()},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(
        f"  {name:24s} acc {100 * row['test_acc']:.2f}  int {100 * (row['int_acc'] or 0):.2f}  {row['energy_uj']:.3f} uJ  ({row['wall_s']} s)",
        flush=True,
    )
    return row


@dataclasses.dataclass(frozen=True)
class Run:
    """What every stage of one accuracy run shares: the model and profile, the plan's
    sensitivity method and space, and config fields set for every trial and the plan."""

    model: str
    prof: str
    method: str = "hessian"
    free_ends: bool = False  # the search may also choose the first and last layers' bits
    act_candidates: tuple[int, ...] | None = None  # the activation knobs' own candidates
    overrides: tuple[tuple[str, object], ...] = ()  # (field, value): qat_epochs, seed

    def base(self) -> TrainConfig:
        """The profile's trial with the low-bit recipe and the overrides."""
        return profile(self.prof, model=self.model, **{**LOW, **dict(self.overrides)})


def pinned_uniform(space, bits: int, ends: int = 8) -> tuple[int, ...]:
    """The knob assignment of a uniform trial: every knob (weights, and every activation
    quantizer, those feeding no layer included) at ``bits``; the first layer's weights and
    input, the last layer's weights and its output (the logits) at ``ends``
    (``first_last_bits``'s rule), whether or not the space pins them."""
    assign = [bits] * len(space.knobs)
    first, last = space.layers[0], space.layers[-1]
    ends_knobs = [first.w_knob, first.a_knob, last.w_knob]
    logits = space.knob_of_value(last.op)
    if logits is not None:
        ends_knobs.append(logits)
    for k in ends_knobs:
        assign[k] = ends
    return tuple(assign)


def stage_plan(run: Run, out: Path) -> dict:
    """Budgets from the cost tables' uniform W4A4 / W2A2 (the same bits as the uniform
    trials, so the same simulated cost; the report checks it) and 0.5 x W8A8. A uniform
    point outside ``run.act_candidates`` has no budget (its energy is not in the tables)."""
    from qatlab.mixed import with_sensitivity
    from qatlab.mixed.search import to_units

    base = run.base()
    t0 = time.perf_counter()
    p = plan(dataclasses.replace(base, first_last_bits=None) if run.free_ends else base, [], run.method, act_candidates=run.act_candidates)
    problem = with_sensitivity(p.tables, p.sensitivity)
    uniform = {b: pinned_uniform(p.space, b, base.first_last_bits or b) for b in (8, 4, 2)}
    inside = {b: a for b, a in uniform.items() if all(v in k.domain for v, k in zip(a, p.space.knobs))}
    e = {b: to_units(p.tables, problem.evaluate(a)[1])["asic_energy"] for b, a in inside.items()}
    budgets = {
        "at_half_w8a8": Budget("asic_energy", 0.5, relative=True),  # uniform W8A8: ends at 8 either way
        **{f"at_w{b}a{b}_energy": Budget("asic_energy", e[b]) for b in (4, 2) if b in e},
    }
    configs: dict[str, dict] = {}
    for k, b in budgets.items():
        try:
            c = search(p.tables, p.sensitivity, b, problem)
            configs[k] = {"layer_bits": c.layer_bits, "predicted": c.predicted, "sensitivity": c.sensitivity}
        except InfeasibleBudgetError as err:
            configs[k] = {"infeasible": str(err), "budget": b.describe()}
    doc = {
        "plan_s": time.perf_counter() - t0,
        "method": run.method,
        "free_ends": run.free_ends,
        "act_candidates": list(run.act_candidates) if run.act_candidates is not None else None,
        "uniform_energy_uj": e,
        "uniform_layer_bits": {b: p.space.layer_bits(a) for b, a in uniform.items()},
        "sensitivity": {n: [[w, a, v] for (w, a), v in sorted(r.items())] for n, r in p.sensitivity.items()},
        "configs": configs,
    }
    write_json(out / "plan.json", doc)
    print(f"  plan ({run.method}{', free ends' if run.free_ends else ''}): {doc['plan_s']:.1f} s; uniform energies {e}", flush=True)
    for k, c in configs.items():
        print(f"    {k}: {c.get('layer_bits') or c['infeasible']}", flush=True)
    return doc


def _same_trial(out: Path, name: str, plan_doc: dict) -> str | None:
    """A finished trial of ``out`` with the bits the plan gives ``name`` (a uniform
    trial, or another budget's configuration), or None."""
    bits = plan_doc["configs"][name[len("mixed_") :]]["layer_bits"]
    same = [f"uniform_w{b}a{b}" for b, lb in plan_doc.get("uniform_layer_bits", {}).items() if lb == bits]
    same += [f"mixed_{k}" for k, c in plan_doc["configs"].items() if f"mixed_{k}" != name and c.get("layer_bits") == bits]
    return next((n for n in same if (out / f"{n}.json").exists() and "same_as" not in json.loads((out / f"{n}.json").read_text())), None)


def stage_trial(run: Run, name: str, out: Path) -> dict:
    base = run.base()
    if name.startswith("uniform_w"):
        bits = int(name[len("uniform_w")])
        cfg = TrainConfig.from_dict({**base.to_dict(), "w_bits": bits, "a_bits": bits})
        pred = None
    else:
        plan_doc = json.loads((out / "plan.json").read_text())
        chosen = plan_doc["configs"][name[len("mixed_") :]]
        if "infeasible" in chosen:
            raise RuntimeError(f"{name}: no configuration meets the budget: {chosen['infeasible']}")
        # layer_bits names every layer, so it overrides the profile's pinned ends
        # (a --free-ends plan may give them other bits).
        cfg = TrainConfig.from_dict({**base.to_dict(), "layer_bits": chosen["layer_bits"]})
        pred = chosen["predicted"]["asic_energy"]
        same = _same_trial(out, name, plan_doc)
        if same is not None:
            row = {**json.loads((out / f"{same}.json").read_text()), "name": name, "same_as": same, "predicted_energy_uj": pred}
            write_json(out / f"{name}.json", row)
            print(f"  {name:24s} = {same} (same bits, not trained again)", flush=True)
            return row
    done = (out / name / "intmodel.pt").exists() and (out / name / "model.pt").exists()
    row = _rescore(out, name) if done else _trial(cfg, out, name, ArrayConfig())
    row["predicted_energy_uj"] = pred
    write_json(out / f"{name}.json", row)
    return row


TRIAL_NAMES = ("uniform_w8a8", "uniform_w4a4", "uniform_w2a2", "mixed_at_w4a4_energy", "mixed_at_w2a2_energy", "mixed_at_half_w8a8")


def report(out: Path) -> dict:
    rows = [json.loads((out / f"{n}.json").read_text()) for n in TRIAL_NAMES if (out / f"{n}.json").exists()]
    by = {r["name"]: r for r in rows}
    fp32 = rows[0]["fp32_acc"] if rows else float("nan")
    checks: dict[str, bool] = {}
    # "At its energy": the mixed model's simulated energy may not exceed the trained
    # uniform model's (the budget came from the tables, which may price it otherwise).
    if {"mixed_at_w4a4_energy", "uniform_w4a4"} <= set(by):
        m, u = by["mixed_at_w4a4_energy"], by["uniform_w4a4"]
        checks["mixed >= uniform W4A4 at its energy"] = m["test_acc"] >= u["test_acc"] and m["energy_uj"] <= u["energy_uj"]
    if {"mixed_at_w2a2_energy", "uniform_w2a2"} <= set(by):
        m, u = by["mixed_at_w2a2_energy"], by["uniform_w2a2"]
        checks["mixed at W2A2 energy: +0.5 pt or within 0.3 of FP32"] = m["energy_uj"] <= u["energy_uj"] and m["test_acc"] >= min(
            u["test_acc"] + 0.005, fp32 - 0.003
        )
    uni = [r for r in rows if r["name"].startswith("uniform")]
    mixed = [r for r in rows if r["name"].startswith("mixed")]
    if uni and mixed:
        checks["no uniform point dominates a mixed one"] = not any(
            u["energy_uj"] <= m["energy_uj"] and u["test_acc"] > m["test_acc"] for u, m in itertools.product(uni, mixed)
        )
        checks["predicted energy == simulated"] = all(m["predicted_energy_uj"] == m["energy_uj"] for m in mixed)
    plan_doc = json.loads((out / "plan.json").read_text()) if (out / "plan.json").exists() else {}
    for b in (4, 2):
        u = by.get(f"uniform_w{b}a{b}")
        if u is not None and plan_doc:
            if str(b) in plan_doc["uniform_energy_uj"]:  # not when the act_candidates leave it out
                checks[f"tables' uniform W{b}A{b} energy == trained uniform W{b}A{b}"] = (
                    plan_doc["uniform_energy_uj"][str(b)] == u["energy_uj"]
                )
    print(f"{'trial':24s} {'test acc':>8s} {'int acc':>8s} {'energy uJ':>10s}  layer bits [w, a]")
    for r in rows:
        same = f"  (= {r['same_as']})" if "same_as" in r else ""
        print(
            f"{r['name']:24s} {100 * r['test_acc']:8.2f} {100 * (r['int_acc'] or 0):8.2f} {r['energy_uj']:10.3f}  {r['layer_bits']}{same}"
        )
    print(f"FP32 {100 * fp32:.2f}")
    return {"fp32_acc": fp32, "rows": rows, "plan": plan_doc, "checks": checks}


def bench_accuracy(run: Run, out: Path) -> dict:
    doc = stage_plan(run, out)
    for n in TRIAL_NAMES:
        budget = n[len("mixed_") :] if n.startswith("mixed_") else None
        if budget is None or "layer_bits" in doc["configs"].get(budget, {}):
            stage_trial(run, n, out)
    return report(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--repeats", type=int, default=5)
    sp.add_argument("--skip-hessian", action="store_true")
    acc = sub.add_parser("accuracy")
    acc.add_argument("--model", default="lenet", choices=("lenet", "mobilenet"))
    acc.add_argument("--profile", default="quick", choices=("tiny", "quick", "full"))
    acc.add_argument("--method", default="hessian", choices=methods())  # the registry's, so a new method needs no edit here
    acc.add_argument("--out", type=Path, default=Path("runs/mixed-bench"))
    acc.add_argument(
        "--stage",
        choices=("all", "plan", "trial", "report"),
        default="all",
        help="run one piece (plan, one --trial, the report), e.g. in parallel processes",
    )
    acc.add_argument("--trial", choices=TRIAL_NAMES)
    acc.add_argument("--free-ends", action="store_true", help="the search also chooses the first and last layers' bits")
    acc.add_argument("--qat-epochs", type=int, help="QAT epochs of every trial (default: the profile's)")
    acc.add_argument(
        "--act-candidates", type=lambda v: tuple(int(b) for b in v.split(",")), help="the activation knobs' candidates, e.g. 4,8"
    )
    acc.add_argument("--seed", type=int, help="every trial's seed (default 0); another seed trains and caches another FP32 model")
    for p in (sp, acc):
        p.add_argument("--json", type=Path)
        p.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"machine": machine()}
    ok = True
    if args.what == "speed":
        s = bench_search(args.repeats)
        result["search"] = s
        worst = max(s["ilp_median_s"].values())
        print(f"cost tables, {s['layers']} layers x 9 choices: {s['cost_tables_s']:.2f} s")
        for frac, t in s["ilp_median_s"].items():
            print(f"ILP search at {frac} x W8A8 energy: {t:.3f} s (median of {args.repeats})")
        print(
            f"baseline, 5 layers: brute force {s['brute_force_5_layers_s']:.2f} s over {s['brute_force_5_layers_configs']} configs; "
            f"ILP {s['ilp_5_layers_s']:.4f} s ({s['brute_force_5_layers_s'] / s['ilp_5_layers_s']:.0f}x faster)"
        )
        print(f"{'PASS' if worst <= 2.0 else 'FAIL'}: 50-layer search <= 2 s ({worst:.3f} s)")
        ok &= worst <= 2.0
        if not args.skip_hessian:
            h = bench_hessian(args.repeats)
            result["hessian"] = h
            print(
                f"hessian sensitivity, MobileNet ({h['layers']} layers, batch {h['batch']}, {h['samples']} samples): {h['hessian_s']:.1f} s "
                f"= {h['ratio']:.0f} FP32 training steps ({h['fp32_step_s']:.3f} s each)"
            )
            print(f"{'PASS' if h['hessian_s'] <= 120 else 'FAIL'}: Hessian sensitivity <= 2 min ({h['hessian_s']:.1f} s)")
            ok &= h["hessian_s"] <= 120
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        over = tuple((k, v) for k, v in (("qat_epochs", args.qat_epochs), ("seed", args.seed)) if v is not None)
        run = Run(args.model, args.profile, args.method, args.free_ends, args.act_candidates, over)
        if args.stage == "plan":
            result["plan"] = stage_plan(run, args.out)
            r = {"checks": {}}
        elif args.stage == "trial":
            if args.trial is None:
                ap.error("--stage trial needs --trial NAME")
            result["trial"] = stage_trial(run, args.trial, args.out)
            r = {"checks": {}}
        elif args.stage == "report":
            r = report(args.out)
        else:
            r = bench_accuracy(run, args.out)
        result["accuracy"] = r
        for name, passed in r["checks"].items():
            print(f"{'PASS' if passed else 'FAIL'}: {name}")
            ok &= passed
    if args.json:
        write_json(args.json, result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
