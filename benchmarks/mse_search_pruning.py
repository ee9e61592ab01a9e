"""The fused ``mse`` range search with candidate pruning against evaluating every candidate.

    python benchmarks/mse_search_pruning.py [--threads 1] [--repeats 7] [--grid 100] [--json out.json]

Rows shaped like the MobileNet-style model's activations at batch 128 (one row per
tensor: hardswish, ReLU6 and normal-shaped values of 10^5..10^6 values) and a
per-channel weight, at 2, 4 and 8 bits, asymmetric. Each case runs the fused search
twice in the same process, interleaved: with pruning (rows of at least
``PRUNE_MIN_VALUES`` values bound every candidate from a histogram pass and evaluate
only those that can win) and with every candidate evaluated (``min_prune=0``, the
baseline). Prints the best-of-N times, their ratio, how many of the candidates were
evaluated, and checks that both chose the same range bit for bit.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from qatlab.atomic import write_json
from qatlab.nn.fused import enabled as fused_enabled
from qatlab.nn.fused import load_error
from qatlab.nn.fused.ops import ASYMMETRIC, PRUNE_MIN_VALUES, ObservePlan, mse_search_fused
from qatlab.quant.estimators import row_minmax
from qatlab.timing import interleaved_samples, machine


def cases(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "hardswish 128x160x7x7": F.hardswish(3 * torch.randn(1, 128 * 160 * 49, generator=gen)),
        "relu6 128x64x14x14": torch.randn(1, 128 * 64 * 196, generator=gen).clamp(0, 6),
        "normal 128x40x7x7": torch.randn(1, 128 * 40 * 49, generator=gen),
        "weight 192x48 per channel": torch.randn(192, 48, generator=gen),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--grid", type=int, default=100)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if not fused_enabled():
        print(f"the fused kernels are not in use here: {load_error() or 'QATLAB_FUSED=0'}", file=sys.stderr)
        return 1
    torch.set_num_threads(a.threads)
    rows = []
    for name, x in cases(torch.Generator().manual_seed(0)).items():
        lo, hi = (t.contiguous() for t in row_minmax(x))
        for bits in (2, 4, 8):
            plan = ObservePlan(x.shape, 0, 0, 2**bits - 1, float(2**bits - 1), ASYMMETRIC)
            runs = {}
            for label, min_prune in (("pruned", PRUNE_MIN_VALUES), ("full", 0)):
                runs[label] = mse_search_fused(x, lo, hi, a.grid, plan, min_prune=min_prune)
            same = all(torch.equal(getattr(runs["pruned"], f), getattr(runs["full"], f)) for f in ("lo", "hi", "err"))
            samples = interleaved_samples(
                {
                    "pruned": lambda: mse_search_fused(x, lo, hi, a.grid, plan, min_prune=PRUNE_MIN_VALUES),
                    "full": lambda: mse_search_fused(x, lo, hi, a.grid, plan, min_prune=0),
                },
                repeats=a.repeats,
                warmup=1,
            )
            t_pruned, t_full = min(samples["pruned"]), min(samples["full"])
            rows.append(
                {
                    "case": name,
                    "bits": bits,
                    "values": x.numel(),
                    "pruned_ms": round(t_pruned * 1e3, 3),
                    "full_ms": round(t_full * 1e3, 3),
                    "pruned_vs_full": round(t_pruned / t_full, 3),
                    "evaluated": int(runs["pruned"].evaluated.max()),
                    "same_choice": same,
                }
            )
            r = rows[-1]
            print(
                f"{name:28s} {bits} bits: pruned {r['pruned_ms']:8.3f} ms, all {a.grid} candidates {r['full_ms']:8.3f} ms, "
                f"ratio {r['pruned_vs_full']:.3f}, evaluated {r['evaluated']}/{a.grid}, same choice: {same}"
            )
    if a.json:
        write_json(a.json, {"machine": machine(), "threads": a.threads, "rows": rows})
    return 0 if all(r["same_choice"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
