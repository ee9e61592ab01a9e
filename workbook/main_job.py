"""``workbook run``: the main job.

Today it trains the profile's FP32 / PTQ / QAT trio of the default CNN (plus any
``-p`` overrides), converts each quantized model to its integer model and checks
it, writes ``<out>/results.json`` and prints the comparison. The Ray sweep
(issue 4) and the papermill notebooks with HTML reports (issue 5) replace this
sequential loop when they land.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import yaml

from qatlab.config import PROFILES, ConfigError, TrainConfig, profile

TRIO = (
    {"method": "fp32"},
    {"method": "ptq", "w_bits": 8, "a_bits": 8, "ste": "clipped"},
    {"method": "qat", "w_bits": 8, "a_bits": 8, "ste": "lsq"},
    {"method": "qat", "w_bits": 4, "a_bits": 4, "ste": "lsq"},
)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed as YAML scalars) checked against TrainConfig's fields."""
    from workbook.cli import CommandError

    valid = sorted(TrainConfig.__dataclass_fields__)
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise CommandError(f"-p {p!r}: expected KEY=VALUE")
        if key not in valid:
            raise CommandError(f"-p {key}: unknown parameter; valid keys: {', '.join(valid)}")
        out[key] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from workbook.cli import CommandError

    if args.spec not in PROFILES:
        raise CommandError(f"--spec {args.spec!r}: unknown; available: {', '.join(PROFILES)} (YAML specs arrive with the sweep runner)")
    if args.address:
        raise CommandError("--address needs the Ray sweep runner (issue 4), which is not built yet")
    params = parse_params(args.params)
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{args.spec}"
    out = Path(args.out or Path("reports") / run_id)
    out.mkdir(parents=True, exist_ok=True)
    try:
        configs = [profile(args.spec, **{**t, **params}) for t in TRIO]
    except ConfigError as e:
        raise CommandError(str(e)) from None

    from qatlab.train import run_trial

    records = []
    for cfg in configs:
        label = f"{cfg.method} W{cfg.w_bits}A{cfg.a_bits} {cfg.ste}" if cfg.method != "fp32" else "fp32"
        print(f"[{len(records) + 1}/{len(configs)}] {label} ...", flush=True)
        r = run_trial(cfg, out_dir=out / cfg.trial_id)
        records.append(r)
        _write_json(out / "results.json", records)
        if r["status"] != "ok":
            print(r["error"])
    print()
    print(f"{'method':6} {'W':>2} {'A':>2} {'ste':8} {'status':6} {'fp32':>6} {'test':>6} {'int':>6} {'agree':>6} {'sec':>6}")
    for r in records:
        f = lambda k: f"{100 * r[k]:6.2f}" if isinstance(r.get(k), float) else "     -"  # noqa: E731
        print(f"{r['method']:6} {r['w_bits']:>2} {r['a_bits']:>2} {r['ste']:8} {r['status']:6} {f('fp32_acc')} {f('test_acc')} {f('int_acc')} {f('int_agreement')} {r['train_s']:6.1f}")
    print(f"\nwrote {out / 'results.json'} (checkpoints and integer models beside it)")
    print("coming next: Ray sweeps (workbook sweep), notebooks and HTML reports, hardware simulators, CUDA kernels")
    return 0 if all(r["status"] == "ok" for r in records) else 1


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)
