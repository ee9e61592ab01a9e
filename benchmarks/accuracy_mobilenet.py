"""Accuracy of the MobileNet-style CNN on Fashion-MNIST: FP32, PTQ W8A8 with per-tensor and
per-channel weights side by side, QAT W8A8 and W4A4 (LSQ), the integer model beside each,
and the peer (torch.ao FX QAT from the same FP32 model, same data, epochs and seed).

    python benchmarks/accuracy_mobilenet.py [--epochs 6] [--qat-epochs 1] [--seed 0] [--json out.json]
    # in parallel on a small machine, one thread each (the FP32 model first, it is cached):
    python benchmarks/accuracy_mobilenet.py --only fp32 --json a.json
    python benchmarks/accuracy_mobilenet.py --only ptq_w8a8_tensor,ptq_w8a8_channel,qat_w8a8_lsq --threads 1 --json b.json &
    python benchmarks/accuracy_mobilenet.py --only qat_w4a4_lsq,torch_ao_qat_w8a8 --threads 1 --json c.json
    python benchmarks/accuracy_mobilenet.py --merge a.json b.json c.json

Prints the table and PASS/FAIL per target.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import torch_ao_peer

from qatlab.atomic import write_json
from qatlab.config import profile
from qatlab.timing import machine
from qatlab.train import run_trial

# Below 8 bits: first and last layers at 8 bits and MSE-optimal starting ranges, as in
# benchmarks/accuracy.py's low-bit recipe.
LOW = {"first_last_bits": 8, "estimator": "mse"}
TRIALS = [
    ("fp32", {"method": "fp32"}),
    ("ptq_w8a8_tensor", {"method": "ptq", "w_bits": 8, "a_bits": 8, "ste": "clipped", "granularity": "tensor"}),
    ("ptq_w8a8_channel", {"method": "ptq", "w_bits": 8, "a_bits": 8, "ste": "clipped", "granularity": "channel"}),
    ("qat_w8a8_lsq", {"method": "qat", "w_bits": 8, "a_bits": 8, "ste": "lsq"}),
    ("qat_w4a4_lsq", {"method": "qat", "w_bits": 4, "a_bits": 4, "ste": "lsq", **LOW}),
]
PEER = "torch_ao_qat_w8a8"
KEEP = (
    "status",
    "fp32_acc",
    "test_acc",
    "int_acc",
    "int_agreement",
    "int_error",
    "train_s",
    "quant_s",
    "epochs",
    "qat_epochs",
    "n_train",
    "device",
)


def base_overrides(epochs: int, qat_epochs: int) -> dict[str, object]:
    return {"model": "mobilenet", "epochs": epochs, "qat_epochs": qat_epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="full", help="data and schedule defaults (qatlab.config.PROFILES)")
    ap.add_argument("--epochs", type=int, default=6, help="FP32 epochs")
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None, help=f"comma-separated from {', '.join([n for n, _ in TRIALS] + [PEER])}")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 per process when running parts in parallel)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="print the table and checks from part files")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.merge:
        parts = [json.loads(Path(f).read_text()) for f in a.merge]
        return report([r for p in parts for r in p["rows"]], parts[0].get("setup", {}), a.json)
    names = [n for n, _ in TRIALS] + [PEER]
    only = set(a.only.split(",")) if a.only else set(names)
    unknown = sorted(only - set(names))
    if unknown:
        ap.error(f"--only: unknown {', '.join(unknown)}; expected from {', '.join(names)}")
    base = base_overrides(a.epochs, a.qat_epochs)
    setup = {"profile": a.profile, "seed": a.seed, **base}
    rows = []
    for name, over in TRIALS:
        if name not in only:
            continue
        r = run_trial(profile(a.profile, seed=a.seed, **base, **over))
        if r["status"] != "ok":
            print(r["error"], file=sys.stderr)
        rows.append({"name": name, **{k: r.get(k) for k in KEEP}})
        print(json.dumps(rows[-1]), flush=True)
    if PEER in only:
        rows.append(torch_ao_peer(a.profile, a.seed, **base))
        print(json.dumps(rows[-1]), flush=True)
    if only != set(names):  # a part: save the rows, the merge prints the table
        if a.json:
            write_json(a.json, {"setup": setup, "machine": machine(), "rows": rows})
        return None
    return report(rows, setup, a.json)


def checks(rows: list[dict]) -> dict[str, bool]:
    by = {r["name"]: r for r in rows}

    def acc(n: str) -> float:
        r = by.get(n)
        return float(r["test_acc"]) if r is not None and r.get("test_acc") is not None else float("nan")

    fp = acc("fp32")
    out = {
        "QAT W8A8 within 0.5 pt of FP32": fp - acc("qat_w8a8_lsq") <= 0.005,
        "QAT W4A4 (LSQ, first/last 8 bit) within 2 pt of FP32": fp - acc("qat_w4a4_lsq") <= 0.020,
        "ours QAT W8A8 >= torch.ao QAT W8A8 - 0.3 pt": acc("qat_w8a8_lsq") >= acc(PEER) - 0.003,
        "PTQ W8A8 per-channel >= per-tensor": acc("ptq_w8a8_channel") >= acc("ptq_w8a8_tensor"),
    }
    for n, r in by.items():
        if r.get("int_agreement") is not None:
            out[f"{n}: IntModel agrees on >= 99.9%, acc within 0.1 pt"] = (
                r["int_agreement"] >= 0.999 and abs(r["int_acc"] - r["test_acc"]) <= 0.001
            )
        elif n not in ("fp32", PEER):
            out[f"{n}: IntModel ran ({r.get('int_error') or r.get('status')})"] = False
    return out


def report(rows: list[dict], setup: dict, json_path: str | None) -> None:
    by = {r["name"]: r for r in rows}
    fp = by["fp32"]["test_acc"] if "fp32" in by else float("nan")
    print(f"\n{json.dumps(setup)}")
    print(f"{'trial':22} {'test %':>7} {'int %':>7} {'agree %':>8} {'Δ vs fp32':>9} {'train s':>8}")
    for r in rows:
        t = r.get("test_acc")
        ts = f"{100 * t:7.2f}" if t is not None else "      -"
        ia = f"{100 * r['int_acc']:7.2f}" if r.get("int_acc") is not None else "      -"
        ag = f"{100 * r['int_agreement']:8.2f}" if r.get("int_agreement") is not None else "       -"
        d = f"{100 * (t - fp):9.2f}" if t is not None else "        -"
        print(f"{r['name']:22} {ts} {ia} {ag} {d} {r.get('train_s', 0):8}")
    c = checks(rows)
    print()
    for k, ok in c.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    if json_path:
        write_json(json_path, {"setup": setup, "machine": machine(), "rows": rows, "checks": c})


if __name__ == "__main__":
    main()
