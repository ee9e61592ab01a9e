"""ONNX Runtime vs the IntModel vs the fake-quant model on the full Fashion-MNIST test set.

Trains the trials (``run_trial``, profile "quick" by default: QAT W8A8 and W4A4 with
LSQ) or takes their checkpoints, exports each to ONNX QDQ, runs the file in ONNX
Runtime (CPU) and prints, per export: fake-quant accuracy, IntModel accuracy, ORT
accuracy, ORT-vs-IntModel prediction agreement, output-code agreement, and the
agreement of ORT with ``emulate_ort`` (ORT's float32 requantization replayed on the
IntModel: 100% means every difference is explained by that rounding).

    python benchmarks/onnx_agreement.py                         # trains (minutes on 2 cores)
    python benchmarks/onnx_agreement.py --checkpoints A/model.pt B/model.pt
    python benchmarks/onnx_agreement.py --json onnx.json

Targets: W8A8 agreement >= 99.5% and |ORT - IntModel| <= 0.2 pt; sub-8-bit
|ORT - IntModel| <= 0.5 pt. Printed as PASS/FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from qatlab.atomic import write_json
from qatlab.config import profile
from qatlab.data import load_dataset
from qatlab.export import compare_onnx, export_onnx, ort_kernels
from qatlab.intmodel import convert, run
from qatlab.train import load_checkpoint, run_trial

TRIALS = [
    ("qat_w8a8_lsq", {"method": "qat", "w_bits": 8, "a_bits": 8, "ste": "lsq"}),
    # The project's headline W4A4 (first/last layer, input and logits at 8 bits, as benchmarks/accuracy.py) ...
    ("qat_w4a4_lsq_fl8", {"method": "qat", "w_bits": 4, "a_bits": 4, "ste": "lsq", "first_last_bits": 8}),
    # ... and 4 bits everywhere, 4-bit input quantizer and logits included.
    ("qat_w4a4_lsq", {"method": "qat", "w_bits": 4, "a_bits": 4, "ste": "lsq"}),
]


def machine() -> dict[str, Any]:
    import onnx
    import onnxruntime

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": torch.get_num_threads(),
    }


def measure(name: str, ckpt: Path, work: Path, per_layer_n: int, extra_n: int) -> list[dict[str, Any]]:
    """The main export (clip form, ORT's default optimizations) on the full test set;
    the variants (no graph optimizations; the int4 form or a fixed-point IntModel) on
    the first ``extra_n`` images."""
    model, cfg, input_shape = load_checkpoint(ckpt)
    splits = load_dataset(cfg.dataset, val_fraction=cfg.val_fraction, limit_train=cfg.limit_train, seed=cfg.seed)
    x, y = splits.test.tensors
    rows = []
    variants = [("float", "clip", "all", None), ("float", "clip", "disable", extra_n)]
    if cfg.w_bits < 8 or cfg.a_bits < 8:
        variants.append(("float", "int4", "all", extra_n))
    else:
        variants.append(("fixed", "clip", "all", extra_n))  # the same QAT model, requantized in gemmlowp fixed point
    refs: dict[str, torch.Tensor] = {}
    for rounding, low_bit, opt, limit in variants:
        im = convert(model, input_shape, rounding)
        xs, ys = (x, y) if limit is None else (x[:limit], y[:limit])
        path = work / f"{name}-{rounding}-{low_bit}.onnx"
        info = export_onnx(im, path, low_bit=low_bit)
        t0 = time.perf_counter()
        if limit is None and rounding not in refs:
            refs[rounding] = run(im, x)  # the IntModel's codes, shared by the variants
        ref = refs[rounding][: len(xs)] if rounding in refs else None
        c = compare_onnx(im, path, xs, ys, fake_quant=model, optimization=opt, emulate=opt != "disable", reference=ref)
        row = {
            "trial": name,
            "rounding": rounding,
            "low_bit": low_bit,
            "optimization": opt,
            "opset": info.opset,
            "code_types": info.code_types,
            "ort_kernels": ort_kernels(path, optimization=opt),
            "n": c.n,
            "fq_acc": c.fq_acc,
            "int_acc": c.int_acc,
            "ort_acc": c.ort_acc,
            "agreement": c.agreement,
            "code_agreement": c.code_agreement,
            "max_code_diff": c.max_code_diff,
            "emulated_agreement": c.emulated_agreement,
            "n_disagree": round((1 - c.agreement) * c.n),
            "compare_s": round(time.perf_counter() - t0, 1),
        }
        if per_layer_n and (rounding, low_bit, opt) == ("float", "clip", "all"):
            pl = compare_onnx(im, path, x[:per_layer_n], y[:per_layer_n], per_layer=True)
            row["layers"] = [vars(ld) for ld in pl.layers or []]
            row["attribution"] = attribution(im, x[:per_layer_n])
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("layers", "attribution")}), flush=True)
    return rows


def attribution(im: Any, x: torch.Tensor) -> list[dict[str, Any]]:
    """Split each conv/linear layer's requantization differences (reference vs ORT) by
    cause, on the reference's own layer inputs: ``multiplier`` counts codes that change
    when M is rounded to float32 as ORT does (fp32(fp32(s_x·s_w)/s_y)), ``product`` those
    that change when, in addition, acc·M is computed in float32 rather than float64."""
    from qatlab.export.runtime import _accumulator  # the reference's exact int32 accumulator
    from qatlab.intmodel.reference import run_op

    inputs: dict[str, torch.Tensor] = {}

    def capture(op: Any, vals: dict[str, torch.Tensor], qs: dict[str, Any], rounding: str) -> torch.Tensor:
        if op.kind in ("conv", "linear"):
            inputs[op.name] = vals[op.inputs[0]]
        return run_op(op, vals, qs, rounding)

    run(im, x, len(x), capture)
    qs = {op.output: op.out_q for op in im.ops}
    out = []
    for op in im.compute_ops():
        xq = qs[op.inputs[0]]
        acc = _accumulator(op, inputs[op.name], xq)
        shape = (1, -1, 1, 1) if op.kind == "conv" else (1, -1)
        m64 = op.tensors["multiplier"].double().view(shape)
        m32 = (
            (torch.tensor(xq.scale, dtype=torch.float32) * op.tensors["w_scale"].float())
            / torch.tensor(op.out_q.scale, dtype=torch.float32)
        ).view(shape)
        ref = torch.round(acc.double() * m64)
        mult = torch.round(acc.double() * m32.double())
        prod = torch.round(acc.float() * m32).double()
        lo = (op.out_q.zero_point if op.attrs.get("relu") else op.out_q.qmin) - op.out_q.zero_point
        hi = op.out_q.qmax - op.out_q.zero_point
        ref, mult, prod = (t.clamp(lo, hi) for t in (ref, mult, prod))
        out.append(
            {
                "layer": op.name,
                "kind": op.kind,
                "codes": ref.numel(),
                "multiplier": int((ref != mult).sum()),
                "product": int((mult != prod).sum()),
                "total": int((ref != prod).sum()),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoints", nargs="*", default=None, help="model.pt files to use instead of training")
    ap.add_argument("--work", default=None, help="folder for trials and .onnx files (default: a temp folder)")
    ap.add_argument("--per-layer", type=int, default=1000, metavar="N", help="per-layer codes mismatch on the first N images (0: off)")
    ap.add_argument(
        "--extra",
        type=int,
        default=2000,
        metavar="N",
        help="variants (no ORT optimizations, int4 form, fixed-point IntModel) on the first N images",
    )
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    work = Path(a.work or tempfile.mkdtemp(prefix="onnx-agreement-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpts: list[tuple[str, Path]] = []
    trials: dict[str, Any] = {}
    if a.checkpoints:
        ckpts = [(Path(p).parent.name or f"ckpt{i}", Path(p)) for i, p in enumerate(a.checkpoints)]
    else:
        for name, over in TRIALS:
            t0 = time.perf_counter()
            r = run_trial(profile(a.profile, seed=a.seed, **over), out_dir=work / name)
            if r["status"] != "ok":
                print(r["error"], file=sys.stderr)
                continue
            trials[name] = {k: r.get(k) for k in ("fp32_acc", "test_acc", "int_acc", "int_agreement", "n_train", "n_test")}
            trials[name]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps({"trial": name, **trials[name]}), flush=True)
            ckpts.append((name, work / name / "model.pt"))
    rows: list[dict[str, Any]] = []
    for name, ck in ckpts:
        rows += measure(name, ck, work, a.per_layer, a.extra)

    print(f"\nprofile {a.profile}, seed {a.seed}; {machine()}")
    print(
        f"{'trial':18} {'round':5} {'form':4} {'ORT opt':7} {'n':>5} {'fq %':>6} {'int %':>6} {'ORT %':>6} {'agree %':>8} {'codes %':>8} {'emul %':>7} {'#diff':>5}"
    )
    for r in rows:
        emu = f"{100 * r['emulated_agreement']:7.3f}" if r["emulated_agreement"] is not None else "      -"
        print(
            f"{r['trial']:18} {r['rounding']:5} {r['low_bit']:4} {r['optimization']:7} {r['n']:5d} {100 * r['fq_acc']:6.2f} {100 * r['int_acc']:6.2f}"
            f" {100 * r['ort_acc']:6.2f} {100 * r['agreement']:8.3f} {100 * r['code_agreement']:8.3f} {emu} {r['n_disagree']:5d}"
        )
    for r in rows:
        if "layers" in r:
            worst = max(r["layers"], key=lambda d: d["mismatch"]) if r["layers"] else None
            if worst and worst["mismatch"] == 0:
                print(f"{r['trial']}: per layer (first {a.per_layer} images) every layer's codes equal the reference's")
            elif worst:
                print(
                    f"{r['trial']}: per layer (first {a.per_layer} images) worst codes mismatch {100 * worst['mismatch']:.4f}% at {worst['name']} ({worst['kind']}); max emulation mismatch {100 * max(d['emulated_mismatch'] for d in r['layers']):.4f}%"
                )
    for r in rows:
        for at in r.get("attribution", []):
            if at["total"] or at["multiplier"] or at["product"]:
                print(
                    f"{r['trial']}: {at['kind']} {at['layer']}: {at['total']} of {at['codes']} requantized codes differ (net); "
                    f"{at['multiplier']} change when M is rounded to float32, {at['product']} change again when acc·M is also a float32 product"
                )
    checks: dict[str, bool] = {}
    for r in rows:
        if (r["rounding"], r["low_bit"], r["optimization"]) != ("float", "clip", "all"):
            continue
        w8a8 = "w8a8" in r["trial"]
        if w8a8:
            checks[f"{r['trial']}: ORT agrees with IntModel on >= 99.5%"] = r["agreement"] >= 0.995
            checks[f"{r['trial']}: |ORT - IntModel| <= 0.2 pt"] = abs(r["ort_acc"] - r["int_acc"]) <= 0.002
        else:
            checks[f"{r['trial']}: |ORT - IntModel| <= 0.5 pt"] = abs(r["ort_acc"] - r["int_acc"]) <= 0.005
    print()
    for k, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    if a.json:
        write_json(a.json, {"profile": a.profile, "seed": a.seed, "machine": machine(), "trials": trials, "rows": rows, "checks": checks})


if __name__ == "__main__":
    main()
