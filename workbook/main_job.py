"""``workbook run``: the main job.

Until the sweep runner and the notebooks land (issues 4 and 5), the main job runs
what exists: the quantizer error study (SQNR by bits x granularity x estimator)
on Gaussian and heavy-tailed tensors, printed and saved under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from qatlab.quant import ESTIMATORS, QuantSpec, error_report, fake_quantize


def quantizer_table(seed: int = 0) -> list[dict[str, object]]:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(64, 576, generator=g) - 0.5
    tensors = {
        "gaussian": torch.randn(64, 576, generator=g),
        "laplace": -torch.sign(u) * torch.log1p(-2 * u.abs()),
    }
    rows = []
    for name, x in tensors.items():
        for bits in (8, 4, 2):
            for gran in ("tensor", "channel", "group:64", "element"):
                for est in ESTIMATORS:
                    for rule in ("standard", "halfrange"):
                        if rule == "halfrange" and (est != "minmax" or gran != "channel"):
                            continue
                        spec = QuantSpec(bits=bits, granularity=gran, estimator=est, scale_rule=rule)
                        try:
                            rep = error_report(x, fake_quantize(x, spec))
                        except ValueError as e:
                            rep = {"error": str(e)}
                        rows.append({"tensor": name, "bits": bits, "granularity": gran, "estimator": est, "scale_rule": rule, **rep})
    return rows


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or "reports/latest")
    out.mkdir(parents=True, exist_ok=True)
    rows = quantizer_table()
    tmp = out / "quantizers.json.tmp"
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, out / "quantizers.json")
    print(f"{'tensor':9} {'bits':>4} {'granularity':11} {'estimator':10} {'rule':9} {'SQNR dB':>8}")
    for r in rows:
        sq = f"{r['sqnr_db']:8.2f}" if "sqnr_db" in r else "     n/a"
        print(f"{r['tensor']:9} {r['bits']:>4} {r['granularity']:11} {r['estimator']:10} {r['scale_rule']:9} {sq}")
    print(f"\nwrote {out / 'quantizers.json'}")
    print("coming next: QAT training on Fashion-MNIST, the integer model, Ray sweeps and HTML reports")
    return 0
