"""int8 GEMM and conv kernels vs cuBLASLt (torch._int_mm), fp16 cuBLAS and cuDNN, one run.

    python benchmarks/kernels.py [--json FILE] [--quick] [--reps N] [--no-dp4a] [--no-conv | --conv-only]

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

Convolutions (unless --no-conv): ResNet-style layers, 3x3 (padding 1) and 1x1, stride
1, at 56x56x64, 28x28x128, 14x14x256 and 7x7x512 (C = K), batch 1 and 64, NHWC int8 x
KRSC int8. Timed: our implicit GEMM (int32 out, and with the fused requant epilogue),
our direct __dp4a kernel, and cuDNN fp16 and fp32 (torch conv2d, channels_last,
cudnn.benchmark on; fp32 runs as TF32 when torch allows it, printed). Correctness
first: our int32 outputs vs an exact float64 conv2d on the GPU, the fused codes vs
``qatlab.quant.requantize`` of that. TOPS = 2·N·OH·OW·K·R·S·C / t; ratios are
t(cuDNN) / t(ours), > 1 means ours is faster. Our launches go through the Python
launcher (checks, CuPy views of torch tensors) on every call, so the smallest layers
measure that overhead as much as the kernel.

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

# (spatial, channels) of ResNet's four stages; both 3x3 and 1x1, batch 1 and 64
CONV_LAYERS = [(56, 64), (28, 128), (14, 256), (7, 512)]
CONV_BATCHES = (1, 64)


def _need_cuda() -> tuple[Any, Any]:
    try:
        import torch
    except ImportError as e:
        sys.exit(f"benchmarks/kernels.py: torch is not importable ({e}); nothing to measure")
    if not torch.cuda.is_available():
        print(
            "benchmarks/kernels.py: no CUDA device visible to torch; this benchmark needs an NVIDIA GPU "
            "(sm_80+) with torch (CUDA build) and CuPy (pip install -e '.[gpu]'). Nothing was measured.",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        import cupy
    except ImportError as e:
        print(
            f"benchmarks/kernels.py: CuPy is not importable ({e}); install the 'gpu' extra "
            "(cupy-cuda12x, or cupy-cuda13x on CUDA 13). Nothing was measured.",
            file=sys.stderr,
        )
        sys.exit(2)
    return torch, cupy


def _peak(name: str) -> float | None:
    for key, tops in INT8_PEAK_TOPS.items():
        if all(part in name for part in key.split()):
            return tops
    return None


def _time(
    torch: Any, fn: Callable[[Any, Any], Any], make: Callable[[], tuple[Any, Any]], warmup: int, reps: int, budget_s: float
) -> tuple[float, int]:
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


def _add_timings(row: dict[str, Any], ms: dict[str, float], flops: float) -> str:
    """``row["<impl> ms"]`` and ``row["<impl> TOPS"]`` for every timed implementation; returns
    the TOPS summary of the printed line."""
    for iname, t in ms.items():
        row[f"{iname} ms"] = round(t, 4)
        row[f"{iname} TOPS"] = round(flops / (t * 1e-3) / 1e12, 2)
    return "  ".join(f"{i}: {row[f'{i} TOPS']:.1f}" for i in ms)


def _pad_to(torch: Any, x: Any, rows: int, cols: int) -> Any:
    if tuple(x.shape) == (rows, cols):
        return x
    out = torch.zeros((rows, cols), dtype=x.dtype, device=x.device)
    out[: x.shape[0], : x.shape[1]] = x
    return out


def run(quick: bool = False, reps: int | None = None, dp4a: bool = True) -> list[dict[str, Any]]:
    torch, cupy = _need_cuda()
    import numpy as np

    from qatlab.kernels import int8_gemm_requant_ref
    from qatlab.kernels.cupy_backend import int8_gemm_dp4a, int8_gemm_mma, int8_gemm_mma_requant

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak = _peak(name)
    print(
        f"# device: {name}  (sm_{''.join(map(str, torch.cuda.get_device_capability(0)))}), "
        f"int8 dense peak: {peak or 'unknown'} TOPS; torch {torch.__version__}, cupy {cupy.__version__}"
    )
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
        row: dict[str, Any] = {
            "shape": label,
            "M": m,
            "N": n,
            "K": k,
            "device": name,
            "correct_mma": ok_mma,
            "correct_dp4a": ok_dp4a,
            "correct_fused": ok_fused,
            "int_mm_padded_to": [mp, np_, kp] if padded else None,
        }
        tops = _add_timings(row, ms, flops)
        row["mma / _int_mm"] = round(ms["torch._int_mm"] / ms["ours mma"], 3)
        row["mma / fp16"] = round(ms["fp16 torch.matmul"] / ms["ours mma"], 3)
        if peak:
            row["mma % of int8 peak"] = round(100 * row["ours mma TOPS"] / peak, 1)
            row["_int_mm % of int8 peak"] = round(100 * row["torch._int_mm TOPS"] / peak, 1)
        rows.append(row)
        flag = "" if ok_mma and ok_dp4a is not False and ok_fused is not False else "  ** MISMATCH **"
        print(
            f"{label:13s} M={m} N={n} K={k}  TOPS  {tops}  | mma/_int_mm {row['mma / _int_mm']:.2f}  "
            f"mma/fp16 {row['mma / fp16']:.2f}  correct mma={ok_mma} dp4a={ok_dp4a} fused={ok_fused}"
            f"{'  (_int_mm on padded ' + str([mp, np_, kp]) + ')' if padded else ''}{flag}",
            flush=True,
        )
        torch.cuda.empty_cache()
    print(f"# total {time.perf_counter() - t0:.1f} s")
    return rows


def run_conv(reps: int | None = None, batches: tuple[int, ...] = CONV_BATCHES) -> list[dict[str, Any]]:
    """The convolution section: one row per layer and batch (see the module docstring)."""
    torch, cupy = _need_cuda()
    import torch.nn.functional as F

    from qatlab.kernels.cupy_conv import int8_conv2d_direct, int8_conv2d_igemm, int8_conv2d_igemm_requant
    from qatlab.quant import requantize

    torch.backends.cudnn.benchmark = True  # let cuDNN pick its fastest algorithm (during warm-up)
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak = _peak(name)
    print(
        f"# conv: NHWC int8 x KRSC int8, stride 1, 'same' padding; cuDNN via torch conv2d channels_last, "
        f"cudnn.benchmark=True, fp32 allow_tf32={torch.backends.cudnn.allow_tf32}"
    )
    gen = torch.Generator(device=dev).manual_seed(1)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for batch in batches:
        for ksz in (3, 1):
            for hw, ch in CONV_LAYERS:
                n, h, w, c, k, r = batch, hw, hw, ch, ch, ksz
                pad = ksz // 2
                flops = 2.0 * n * h * w * k * r * r * c  # stride 1, same padding: OH, OW = H, W
                big = flops >= 4e9
                nreps = reps or (10 if big else 30)
                budget = 2.0 if big else 1.0
                label = f"conv{ksz}x{ksz} {hw}x{hw}x{ch} b{batch}"

                def make_q() -> tuple[Any, Any]:
                    x = torch.randint(-128, 128, (n, h, w, c), dtype=torch.int8, device=dev, generator=gen)
                    wt = torch.randint(-128, 128, (k, r, r, c), dtype=torch.int8, device=dev, generator=gen)
                    return x, wt

                def as_nchw(dtype: Any) -> Callable[[], tuple[Any, Any]]:
                    def make() -> tuple[Any, Any]:
                        x, wt = make_q()
                        # NHWC / KRSC memory seen as NCHW / KCRS: channels_last, no copy
                        return x.permute(0, 3, 1, 2).to(dtype), wt.permute(0, 3, 1, 2).to(dtype)

                    return make

                # ---- correctness (exact): int32 vs float64 conv2d, fused codes vs requantize
                x, wt = make_q()
                torch.backends.cudnn.benchmark = False  # autotuning the one float64 reference call is waste
                want = F.conv2d(x.permute(0, 3, 1, 2).double(), wt.permute(0, 3, 1, 2).double(), padding=pad)
                torch.backends.cudnn.benchmark = True
                want = want.permute(0, 2, 3, 1).to(torch.int64)
                ok_igemm = bool(torch.equal(int8_conv2d_igemm(x, wt, padding=pad).to(torch.int64), want))
                ok_direct = bool(torch.equal(int8_conv2d_direct(x, wt, padding=pad).to(torch.int64), want))
                bias = torch.randint(-(2**15), 2**15, (k,), dtype=torch.int32, device=dev, generator=gen)
                mult = torch.rand(k, dtype=torch.float64, device=dev, generator=gen) / (128.0 * (r * r * c) ** 0.5 * 4)
                yq = int8_conv2d_igemm_requant(x, wt, bias, mult, -3, -128, 127, padding=pad)
                ref = requantize(want + bias.to(torch.int64), mult, -3, -128, 127, mode="float")
                ok_fused = bool(torch.equal(yq.to(torch.int64), ref))
                del want, ref, yq

                # ---- timing
                impls: list[tuple[str, Callable, Callable]] = [
                    ("cuDNN fp16", lambda a, b: F.conv2d(a, b, padding=pad), as_nchw(torch.float16)),
                    ("cuDNN fp32", lambda a, b: F.conv2d(a, b, padding=pad), as_nchw(torch.float32)),
                    ("ours igemm", lambda a, b: int8_conv2d_igemm(a, b, padding=pad), make_q),
                    ("ours igemm+requant", lambda a, b: int8_conv2d_igemm_requant(a, b, bias, mult, 0, -128, 127, padding=pad), make_q),
                    ("ours direct", lambda a, b: int8_conv2d_direct(a, b, padding=pad), make_q),
                ]
                ms: dict[str, float] = {}
                for iname, fn, make in impls:
                    ms[iname], _ = _time(torch, fn, make, warmup=3, reps=nreps, budget_s=budget)
                row: dict[str, Any] = {
                    "kind": "conv",
                    "shape": label,
                    "N": n,
                    "H": h,
                    "W": w,
                    "C": c,
                    "K": k,
                    "R": r,
                    "S": r,
                    "stride": 1,
                    "padding": pad,
                    "device": name,
                    "correct_igemm": ok_igemm,
                    "correct_direct": ok_direct,
                    "correct_fused": ok_fused,
                }
                tops = _add_timings(row, ms, flops)
                row["igemm / cuDNN fp16"] = round(ms["cuDNN fp16"] / ms["ours igemm"], 3)
                row["igemm / cuDNN fp32"] = round(ms["cuDNN fp32"] / ms["ours igemm"], 3)
                row["direct / cuDNN fp16"] = round(ms["cuDNN fp16"] / ms["ours direct"], 3)
                if peak:
                    row["igemm % of int8 peak"] = round(100 * row["ours igemm TOPS"] / peak, 1)
                rows.append(row)
                flag = "" if ok_igemm and ok_direct and ok_fused else "  ** MISMATCH **"
                print(
                    f"{label:22s} TOPS  {tops}  | igemm/fp16 {row['igemm / cuDNN fp16']:.2f}  "
                    f"igemm/fp32 {row['igemm / cuDNN fp32']:.2f}  direct/fp16 {row['direct / cuDNN fp16']:.2f}  "
                    f"correct igemm={ok_igemm} direct={ok_direct} fused={ok_fused}{flag}",
                    flush=True,
                )
                torch.cuda.empty_cache()
    print(f"# conv total {time.perf_counter() - t0:.1f} s")
    return rows


def _incorrect(rows: list[dict[str, Any]]) -> list[str]:
    keys = ("correct_mma", "correct_dp4a", "correct_fused", "correct_igemm", "correct_direct")
    return [r["shape"] for r in rows if any(r.get(key) is False for key in keys)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the rows (GEMM and conv) to this JSON file")
    ap.add_argument("--quick", action="store_true", help="skip 8192^3")
    ap.add_argument("--reps", type=int, help="timed runs per implementation (default 10-50 by size)")
    ap.add_argument("--no-dp4a", action="store_true", help="skip the dp4a kernel")
    sect = ap.add_mutually_exclusive_group()
    sect.add_argument("--no-conv", action="store_true", help="skip the convolution section")
    sect.add_argument("--conv-only", action="store_true", help="only the convolution section")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    if not args.conv_only:
        rows += [{"kind": "gemm", **r} for r in run(quick=args.quick, reps=args.reps, dp4a=not args.no_dp4a)]
    if not args.no_conv:
        rows += run_conv(reps=args.reps)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    bad = _incorrect(rows)
    if bad:
        print(f"# INCORRECT results for: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
