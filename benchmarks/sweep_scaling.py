"""Sweep scaling on Ray: 8 short trials with 1 vs 2 concurrent workers, and Ray's overhead.

    python benchmarks/sweep_scaling.py [--trials 8] [--rounds 1] [--json FILE]

One local Ray (2 CPUs, no dashboard), one run of this script:

* speedup: the same sweep (8 QAT W4A4 trials of LeNet on digits, FP32 pretraining
  included, 1 torch thread each) with ``--max-concurrent 1`` and ``2``, run in ABBA
  order (1, 2, 2, 1 per round) so drift on a shared machine cancels; each run uses
  fresh seeds so no run reads another's FP32 cache. Wall time is the whole
  ``run_sweep`` (submission, trials, result files, parquet).
* overhead: a warm no-op task's round trip (scheduling + dispatch), a no-op on a
  fresh worker process (worker start), the same with ``import torch, qatlab``
  (what a trial's first run on a new worker pays), and per trial of the sweeps the
  round trip minus the trial's own time (``roundtrip_s - train_s``: scheduling,
  worker side set-up, log capture, returning record and checkpoints).

The speedup needs two idle cores: each trial records ``cpu_s`` (its process's CPU
time), and ``cpu/wall`` well below 1 at concurrency 2 means the trials waited for a
CPU that other work held, not for Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _spec(trials: int, seed0: int):
    from workbook.spec import spec_from_dict

    return spec_from_dict(
        {
            "name": f"scaling-{seed0}",
            "dataset": "digits",
            "model": "lenet",
            "train": {"epochs": 8, "qat_epochs": 4, "batch_size": 64, "calib_batches": 4},
            "grid": {"method": ["qat"], "bits": [4], "ste": ["lsq"], "seed": list(range(seed0, seed0 + trials))},
            "resources": {"num_cpus": 1},
            "save_models": True,
        },
        "sweep_scaling",
    )


def _overheads(ray, repeats: int = 7) -> dict[str, float]:
    @ray.remote(num_cpus=1)
    def noop() -> float:
        return time.time()

    @ray.remote(num_cpus=1, max_calls=1)  # a new worker process per call
    def noop_fresh() -> float:
        return time.time()

    @ray.remote(num_cpus=1, max_calls=1)
    def import_fresh() -> float:
        import qatlab.train  # noqa: F401  (torch, qatlab: what a trial imports)

        return time.time()

    def rt(fn) -> float:
        t0 = time.perf_counter()
        ray.get(fn.remote())
        return time.perf_counter() - t0

    ray.get([noop.remote() for _ in range(4)])  # warm the pool
    warm = statistics.median(rt(noop) for _ in range(repeats * 5))
    fresh = statistics.median(rt(noop_fresh) for _ in range(repeats))
    fresh_torch = statistics.median(rt(import_fresh) for _ in range(max(3, repeats // 2)))
    return {"task_roundtrip_warm_ms": warm * 1e3, "worker_start_s": fresh, "worker_start_with_torch_s": fresh_torch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1, help="ABBA rounds (each runs both concurrencies twice)")
    ap.add_argument("--json", default=None, metavar="FILE")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="qlbench", dir="/tmp"))
    os.environ["QATLAB_CACHE"] = str(tmp / "cache")  # before ray.init: workers inherit it
    import ray
    import torch

    from workbook.sweep import run_sweep

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 << 20,
             log_to_driver=False, logging_level="warning", _temp_dir=str(tmp / "ray"))  # fmt: skip
    try:
        # Warm-up sweep: start two workers and import torch in them (not measured).
        run_sweep(_spec(2, 10_000), tmp / "warmup", max_concurrent=2, progress=False, stream=open(os.devnull, "w"))
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        seed = 0
        for _ in range(a.rounds):
            for conc in (1, 2, 2, 1):
                seed += 100
                out = tmp / f"run-{seed}"
                t0 = time.perf_counter()
                s = run_sweep(_spec(a.trials, seed), out, max_concurrent=conc, progress=False, stream=open(os.devnull, "w"))
                wall = time.perf_counter() - t0
                assert s.failed == 0 and s.ok == a.trials, f"sweep failed: {s}"
                import pandas as pd

                df = pd.read_parquet(out / "results.parquet")
                over = (df.roundtrip_s - df.train_s).tolist()
                share = float((df.cpu_s / df.train_s).mean())  # ~1: the trial had its core to itself
                runs[conc].append(
                    {"wall_s": wall, "train_s_mean": float(df.train_s.mean()), "overhead_s": statistics.median(over), "cpu_share": share}
                )
                print(f"concurrency {conc}: {wall:6.1f} s wall, trial {df.train_s.mean():.2f} s mean (cpu/wall {share:.2f}), "
                      f"overhead {statistics.median(over):.3f} s median, load avg {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        ov = _overheads(ray)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    def mean(conc: int, key: str) -> float:
        return statistics.fmean(r[key] for r in runs[conc])

    result = {
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__, "ray": ray.__version__, "load_avg_1m": os.getloadavg()[0]},
        "trials": a.trials,
        "wall_s_c1": mean(1, "wall_s"),
        "wall_s_c2": mean(2, "wall_s"),
        "speedup": mean(1, "wall_s") / mean(2, "wall_s"),
        "trial_s_c1": mean(1, "train_s_mean"),
        "trial_s_c2": mean(2, "train_s_mean"),
        "cpu_share_c1": mean(1, "cpu_share"),
        "cpu_share_c2": mean(2, "cpu_share"),
        "per_trial_overhead_s_c1": mean(1, "overhead_s"),
        "per_trial_overhead_s_c2": mean(2, "overhead_s"),
        **ov,
    }
    print()
    print(f"| concurrency | wall s ({a.trials} trials) | mean trial s | trial cpu/wall | per-trial overhead s |")
    print("|---|---|---|---|---|")
    for c in (1, 2):
        print(f"| {c} | {result[f'wall_s_c{c}']:.1f} | {result[f'trial_s_c{c}']:.2f} | {result[f'cpu_share_c{c}']:.2f} "
              f"| {result[f'per_trial_overhead_s_c{c}']:.3f} |")  # fmt: skip
    print(f"\nspeedup 2 vs 1 workers: {result['speedup']:.2f}x (goal >= 1.7)")
    print(f"warm task round trip {ov['task_roundtrip_warm_ms']:.1f} ms; worker start {ov['worker_start_s']:.2f} s; "
          f"worker start + import torch/qatlab {ov['worker_start_with_torch_s']:.2f} s; load avg {result['machine']['load_avg_1m']:.1f}")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
