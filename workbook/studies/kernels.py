"""Kernel study: int8 GEMM throughput vs shape against the float baseline.

What it measures, on every machine: the CPU reference path the integer model uses
(int8 x int8 -> int32 with torch._int_mm on the CPU) against float32 matmul, each
result checked exact before it is timed, and labelled as the CPU path. What it does
not measure: the CUDA int8 kernels of ``qatlab.kernels``, even on a GPU machine; their
figures (against cuBLASLt, fp16 and cuDNN) come from ``benchmarks/kernels.py``
(``workbook bench kernels``). The plot's title carries ``gpu_status()``.
"""

from __future__ import annotations

import statistics
import time

import pandas as pd
import torch

from .hardware import gpu_status


def _median_s(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def cpu_gemm_table(sizes: tuple[int, ...] = (128, 256, 512, 1024), repeats: int = 5) -> pd.DataFrame:
    """CPU reference path: int8 x int8 -> int32 (torch._int_mm) vs float32 matmul, square shapes."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
        af, bf = a.float(), b.float()
        assert torch.equal(torch._int_mm(a, b).double(), af.double() @ bf.double())  # the timing is of a correct result
        ti = _median_s(lambda: torch._int_mm(a, b), repeats)
        tf = _median_s(lambda: af @ bf, repeats)
        ops = 2 * n**3
        rows.append(
            {
                "path": "CPU reference (torch._int_mm)",
                "M=N=K": n,
                "int8 GOPS": ops / ti / 1e9,
                "fp32 GFLOPS": ops / tf / 1e9,
                "int8 / fp32": tf / ti,
            }
        )
    return pd.DataFrame(rows).round(2)


def plot_throughput(table: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(table["M=N=K"], table["int8 GOPS"], marker="o", label="int8 (_int_mm, CPU)")
    ax.plot(table["M=N=K"], table["fp32 GFLOPS"], marker="s", label="fp32 matmul (CPU)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M = N = K")
    ax.set_ylabel("G(FL)OPS")
    ax.set_title(f"CPU reference path - GPU: {gpu_status()}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
