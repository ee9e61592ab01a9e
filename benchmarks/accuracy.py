"""Accuracy of the default CNN on Fashion-MNIST: FP32, PTQ and QAT at 8/4/2 bits, the
integer model beside each, and the peer (torch.ao QAT, same data, epochs and seed).

    python benchmarks/accuracy.py --profile full --json benchmarks/accuracy-full.json
    python benchmarks/accuracy.py --profile quick
    # in parallel on a small machine, one thread each, then the table from the parts:
    python benchmarks/accuracy.py --only fp32,qat_w8a8_lsq --threads 1 --json a.json &
    python benchmarks/accuracy.py --only qat_w4a4_lsq,torch_ao_qat_w8a8 --threads 1 --json b.json
    python benchmarks/accuracy.py --merge a.json b.json

Checks the accuracy targets (BENCHMARKS.md) and prints PASS/FAIL per target.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import torch_ao_freeze, torch_ao_qat

from qatlab.atomic import write_json
from qatlab.config import profile
from qatlab.data import load_dataset
from qatlab.timing import machine
from qatlab.train import accuracy, fit, loader, predictions, pretrain_fp32, resolve_device, run_trial, seed_everything

# Below 8 bits: the first and last layers stay at 8 bits (as in the LSQ paper), and the
# ranges that initialise LSQ's steps (and PTQ's) come from the MSE-optimal clip: a
# min/max range at 2 bits rounds most weights to zero before training starts.
LOW = {"first_last_bits": 8, "estimator": "mse"}
TRIALS = [
    ("fp32", {"method": "fp32"}),
    ("qat_w8a8_lsq", {"method": "qat", "w_bits": 8, "a_bits": 8, "ste": "lsq"}),
    ("qat_w4a4_lsq", {"method": "qat", "w_bits": 4, "a_bits": 4, "ste": "lsq", **LOW}),
    ("qat_w2a2_lsq", {"method": "qat", "w_bits": 2, "a_bits": 2, "ste": "lsq", **LOW}),
    ("ptq_w4a4", {"method": "ptq", "w_bits": 4, "a_bits": 4, "ste": "clipped", **LOW}),
    ("ptq_w4a4_minmax", {"method": "ptq", "w_bits": 4, "a_bits": 4, "ste": "clipped", "first_last_bits": 8}),
    ("qat_w4a4_pact", {"method": "qat", "w_bits": 4, "a_bits": 4, "ste": "pact", **LOW}),
]


def torch_ao_peer(prof: str, seed: int, **overrides: object) -> dict[str, object]:
    cfg = profile(prof, **{"method": "qat", "seed": seed, **overrides})
    device = resolve_device(cfg.device)
    splits = load_dataset(cfg.dataset, val_fraction=cfg.val_fraction, limit_train=cfg.limit_train, seed=cfg.seed)
    fp32, _ = pretrain_fp32(cfg, splits, device)
    gen = seed_everything(cfg.seed + 1)
    x0 = splits.train.tensors[0][:2].to(device)
    m = torch_ao_qat(fp32, x0)
    frozen: list[int] = []

    def on_step(step: int, total: int) -> None:
        if not frozen and step >= int(cfg.freeze_fraction * total):
            torch_ao_freeze(m)
            frozen.append(step)

    t0 = time.perf_counter()
    fit(m, loader(splits.train, cfg.batch_size, gen, True), cfg.qat_epochs, cfg.qat_lr, device, on_step)
    x, y = splits.test.tensors
    return {"name": "torch_ao_qat_w8a8", "test_acc": accuracy(predictions(m, x, device), y), "train_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None, help="comma-separated trial names (default: all, and the torch.ao peer)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 per process when running parts in parallel)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="print the table and checks from part files")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.merge:
        rows = [r for f in a.merge for r in json.loads(Path(f).read_text())["rows"]]
        return report(rows, a.profile, a.seed, a.json)
    only = set(a.only.split(",")) if a.only else None
    rows = []
    for name, over in TRIALS:
        if only is not None and name not in only:
            continue
        r = run_trial(profile(a.profile, seed=a.seed, **over))
        if r["status"] != "ok":
            print(r["error"], file=sys.stderr)
        rows.append(
            {
                "name": name,
                **{
                    k: r.get(k)
                    for k in (
                        "status",
                        "fp32_acc",
                        "test_acc",
                        "int_acc",
                        "int_agreement",
                        "train_s",
                        "epochs",
                        "qat_epochs",
                        "n_train",
                        "device",
                    )
                },
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if only is None or "torch_ao_qat_w8a8" in only:
        rows.append(torch_ao_peer(a.profile, a.seed))
        print(json.dumps(rows[-1]), flush=True)
    if only is not None:  # a part: save the rows, the merge prints the table
        if a.json:
            write_json(a.json, {"profile": a.profile, "seed": a.seed, "machine": machine(), "rows": rows})
        return None
    return report(rows, a.profile, a.seed, a.json)


def report(rows: list[dict], profile_name: str, seed: int, json_path: str | None) -> None:
    by = {r["name"]: r for r in rows}
    fp = by["fp32"]["test_acc"]

    def acc(n: str) -> float:
        return float(by[n]["test_acc"] or 0.0) if n in by else float("nan")

    checks = {
        "FP32 >= 91.0%": fp >= 0.910,
        "QAT W8A8 within 0.3 pt of FP32": fp - acc("qat_w8a8_lsq") <= 0.003,
        "QAT W4A4 (LSQ) within 1.0 pt": fp - acc("qat_w4a4_lsq") <= 0.010,
        "QAT W2A2 (LSQ) within 6 pt": fp - acc("qat_w2a2_lsq") <= 0.060,
        "PTQ W4A4 >= 2 pt below QAT W4A4": acc("qat_w4a4_lsq") - acc("ptq_w4a4") >= 0.020,
        "ours W8A8 >= torch.ao W8A8 - 0.1 pt": acc("qat_w8a8_lsq") >= acc("torch_ao_qat_w8a8") - 0.001,
    }
    for n, r in by.items():
        if r.get("int_agreement") is not None:
            checks[f"{n}: IntModel agrees on >= 99.9%, acc within 0.1 pt"] = (
                r["int_agreement"] >= 0.999 and abs(r["int_acc"] - r["test_acc"]) <= 0.001
            )
    print(f"\nprofile {profile_name}, seed {seed}")
    print(f"{'trial':22} {'test %':>7} {'int %':>7} {'agree %':>8} {'Δ vs fp32':>9}")
    for r in rows:
        ia = f"{100 * r['int_acc']:7.2f}" if r.get("int_acc") is not None else "      -"
        ag = f"{100 * r['int_agreement']:8.2f}" if r.get("int_agreement") is not None else "       -"
        print(f"{r['name']:22} {100 * r['test_acc']:7.2f} {ia} {ag} {100 * (r['test_acc'] - fp):9.2f}")
    print()
    for k, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    if json_path:
        write_json(json_path, {"profile": profile_name, "seed": seed, "machine": machine(), "rows": rows, "checks": checks})


if __name__ == "__main__":
    main()
