"""int8 GEMM kernels vs cuBLASLt (torch._int_mm) and fp16 cuBLAS (torch.matmul), one run.

    python benchmarks/kernels.py [--json FILE] [--quick] [--reps N] [--no-dp4a]

For every shape it first checks correctness (our int32 GEMM vs an exact float64 GPU
matmul — exact because every partial sum of int8 products is far below 2^53 — and
the fused requant kernel vs ``qatlab.quant.requantize`` on the CPU for the layer
shapes), then times each implementation with CUDA events: warm-up launches, then the
median of many runs, each on freshly generated random operands (generation is not
timed). It prints TOPS (2·M·N·K / t) and the ratios ours / _int_mm and ours / fp16,
and the fraction of the card's int8 dense peak where the card is known.

Shapes: 1024^3, 4096^3, 8192^3 and the default model's layers as GEMMs (LeNet on 28x28
Fashion-MNIST, batch 256): conv1 M=256*784 N=32 K=9, conv2 M=256*196 N=64 K=288,
fc1 M=256 N=128 K=3136, fc2 M=256 N=10 K=128. torch._int_mm needs M > 16 and K, N
multiples of 8: where a layer is not, its operands are zero-padded for _int_mm (and
the row says so); our kernels take the shape as is.

Needs torch with CUDA and CuPy; without them it prints why and exits with status 2.
Self-contained: run from the repository root (it puts lib/ on sys.path) with no
network. Budget: well under 4 minutes on one H100.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

# Dense int8 tensor-core peaks (TOPS, no sparsity) from NVIDIA's data sheets.
INT8_PEAK_TOPS = {
    "H100 SXM": 1979.0,
    "H100 80GB HBM3": 1979.0,
    "H100 NVL": 1671.0,
    "H100 PCIe": 1513.0,
    "H200": 1979.0,
    "A100": 624.0,
    "L40S": 733.0,
    "A10": 250.0,
}

SQUARE = [("1024^3", 1024, 1024, 1024), ("4096^3", 4096, 4096, 4096), ("8192^3", 8192, 8192, 8192)]
LENET = [
    ("lenet conv1", 256 * 784, 32, 9),
    ("lenet conv2", 256 * 196, 64, 288),
    ("lenet fc1", 256, 128, 3136),
    ("lenet fc2", 256, 10, 128),
]


def _need_cuda() -> tuple[Any, Any]:
    try:
        import torch
    except ImportError as e:
        sys.exit(f"benchmarks/kernels.py: torch is not importable ({e}); nothing to measure")
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py: no CUDA device visible to torch; this benchmark needs an NVIDIA GPU "
              "(sm_80+) with torch (CUDA build) and CuPy (pip install -e '.[gpu]'). Nothing was measured.",
              file=sys.stderr)
        sys.exit(2)
    try:
        import cupy
    except ImportError as e:
        print(f"benchmarks/kernels.py: CuPy is not importable ({e}); install the 'gpu' extra "
              "(cupy-cuda12x, or cupy-cuda13x on CUDA 13). Nothing was measured.", file=sys.stderr)
        sys.exit(2)
    return torch, cupy


def _peak(name: str) -> float | None:
    for key, tops in INT8_PEAK_TOPS.items():
        if all(part in name for part in key.split()):
            return tops
    return None


def _time(torch: Any, fn: Callable[[Any, Any], Any], make: Callable[[], tuple[Any, Any]], warmup: int,
          reps: int, budget_s: float) -> tuple[float, int]:
    """Median milliseconds of fn over fresh operands; stops early past budget_s."""
    for _ in range(warmup):
        fn(*make())
    torch.cuda.synchronize()
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    for _ in range(reps):
        ops = make()
        torch.cuda.synchronize()  # operand generation is not part of the measurement
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*ops)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
        if time.perf_counter() > t_end and len(times) >= 3:
            break
    return statistics.median(times), len(times)


def _pad_to(torch: Any, x: Any, rows: int, cols: int) -> Any:
    if tuple(x.shape) == (rows, cols):
        return x
    out = torch.zeros((rows, cols), dtype=x.dtype, device=x.device)
    out[: x.shape[0], : x.shape[1]] = x
    return out


def run(quick: bool = False, reps: int | None = None, dp4a: bool = True) -> list[dict[str, Any]]:
    torch, cupy = _need_cuda()
    import numpy as np

    from qatlab.kernels import get_kernel, int8_gemm_requant_ref
    from qatlab.kernels.cupy_backend import int8_gemm_dp4a, int8_gemm_mma, int8_gemm_mma_requant

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak = _peak(name)
    print(f"# device: {name}  (sm_{''.join(map(str, torch.cuda.get_device_capability(0)))}), "
          f"int8 dense peak: {peak or 'unknown'} TOPS; torch {torch.__version__}, cupy {cupy.__version__}")
    rows: list[dict[str, Any]] = []
    gen = torch.Generator(device=dev).manual_seed(0)
    shapes = (SQUARE[:2] if quick else SQUARE) + LENET
    t0 = time.perf_counter()

    for label, m, n, k in shapes:
        big = m * n * k >= 4096**3
        nreps = reps or (15 if m * n * k >= 8192**3 else 30 if big else 50)
        budget = 6.0 if big else 3.0

        def make_ab() -> tuple[Any, Any]:
            a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=dev, generator=gen)
            b = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev, generator=gen)
            return a, b

        # ---- correctness (exact): ours vs float64 GPU matmul; fused vs CPU requantize
        a, b = make_ab()
        want = (a.double() @ b.double().t()).to(torch.int32)
        ok_mma = bool(torch.equal(int8_gemm_mma(a, b), want))
        ok_dp4a = bool(torch.equal(int8_gemm_dp4a(a, b), want)) if dp4a and not (m * n * k >= 8192**3) else None
        ok_fused = None
        if label.startswith("lenet") or m * n * k <= 1024**3:
            bias = torch.randint(-(2**15), 2**15, (n,), dtype=torch.int32, device=dev, generator=gen)
            mult = torch.rand(n, dtype=torch.float64, device=dev, generator=gen) / (128.0 * k**0.5 * 4)
            y = int8_gemm_mma_requant(a, b, bias, mult, -3, -128, 127)
            ref = int8_gemm_requant_ref(a.cpu().numpy(), b.cpu().numpy(), bias.cpu().numpy(), mult.cpu().numpy(), -3, -128, 127)
            ok_fused = bool(np.array_equal(y.cpu().numpy(), ref))
        del want

        # ---- timing
        mp, kp, np_ = max(m, 17), -(-k // 8) * 8, -(-n // 8) * 8
        padded = (mp, np_, kp) != (m, n, k)

        def make_intmm() -> tuple[Any, Any]:
            a, b = make_ab()
            return _pad_to(torch, a, mp, kp), _pad_to(torch, b, np_, kp).t()  # [K, N] column-major view

        def make_half() -> tuple[Any, Any]:
            a, b = make_ab()
            return a.half(), b.half().t()

        impls: list[tuple[str, Callable, Callable]] = [
            ("torch._int_mm", torch._int_mm, make_intmm),
            ("fp16 torch.matmul", torch.matmul, make_half),
            ("ours mma", int8_gemm_mma, make_ab),
        ]
        if dp4a:
            impls.append(("ours dp4a", int8_gemm_dp4a, make_ab))
        if label.startswith("lenet") or label == "4096^3":
            bias = torch.zeros(n, dtype=torch.int32, device=dev)
            mult = torch.full((n,), 1e-4, dtype=torch.float64, device=dev)
            impls.append(("ours mma+requant", lambda a, b: int8_gemm_mma_requant(a, b, bias, mult, 0, -128, 127), make_ab))

        ms: dict[str, float] = {}
        for iname, fn, make in impls:
            r = nreps
            if iname == "ours dp4a" and big:
                r = min(nreps, 5)  # the readable kernel is slow; a few runs say enough
            ms[iname], used = _time(torch, fn, make, warmup=3, reps=r, budget_s=budget)
        flops = 2.0 * m * n * k
        row: dict[str, Any] = {"shape": label, "M": m, "N": n, "K": k, "device": name,
                               "correct_mma": ok_mma, "correct_dp4a": ok_dp4a, "correct_fused": ok_fused,
                               "int_mm_padded_to": [mp, np_, kp] if padded else None}
        for iname, t in ms.items():
            row[f"{iname} ms"] = round(t, 4)
            row[f"{iname} TOPS"] = round(flops / (t * 1e-3) / 1e12, 2)
        row["mma / _int_mm"] = round(ms["torch._int_mm"] / ms["ours mma"], 3)
        row["mma / fp16"] = round(ms["fp16 torch.matmul"] / ms["ours mma"], 3)
        if peak:
            row["mma % of int8 peak"] = round(100 * row["ours mma TOPS"] / peak, 1)
            row["_int_mm % of int8 peak"] = round(100 * row["torch._int_mm TOPS"] / peak, 1)
        rows.append(row)
        tops = "  ".join(f"{i}: {row[f'{i} TOPS']:.1f}" for i in ms)
        flag = "" if ok_mma and ok_dp4a is not False and ok_fused is not False else "  ** MISMATCH **"
        print(f"{label:13s} M={m} N={n} K={k}  TOPS  {tops}  | mma/_int_mm {row['mma / _int_mm']:.2f}  "
              f"mma/fp16 {row['mma / fp16']:.2f}  correct mma={ok_mma} dp4a={ok_dp4a} fused={ok_fused}"
              f"{'  (_int_mm on padded ' + str([mp, np_, kp]) + ')' if padded else ''}{flag}", flush=True)
        torch.cuda.empty_cache()
    print(f"# total {time.perf_counter() - t0:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    ap.add_argument("--quick", action="store_true", help="skip 8192^3")
    ap.add_argument("--reps", type=int, help="timed runs per implementation (default 15-50 by size)")
    ap.add_argument("--no-dp4a", action="store_true", help="skip the dp4a kernel")
    args = ap.parse_args(argv)
    rows = run(quick=args.quick, reps=args.reps, dp4a=not args.no_dp4a)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    bad = [r["shape"] for r in rows if not r["correct_mma"] or r["correct_dp4a"] is False or r["correct_fused"] is False]
    if bad:
        print(f"# INCORRECT results for: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
