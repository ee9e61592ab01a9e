"""Kernel study: throughput of qatlab's int8 GEMM and convolution against shape.

Without a GPU it measures the CPU reference path: qatlab's own exact int8 GEMM and
convolution twins (``qatlab.kernels``, backend ``cpu``, numpy with int64 sums), the
ground truth the CUDA kernels are checked against. They are built to be exact, not
fast; the page says so. With a GPU and CuPy it measures the CUDA kernels against
``torch._int_mm`` (cuBLASLt int8) and cuDNN's fp16 convolution, each result checked
exact before it is timed. ``benchmarks/kernels.py`` has the full GPU benchmark.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import pandas as pd

from .hardware import gpu_status


def _median_s(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def conv_shape(n: int) -> dict[str, int]:
    """The convolution measured beside the ``n``-sized GEMM: a 3x3 conv, 16x16 pixels,
    ``n // 4`` (at least 8) input and output channels, padding 1."""
    c = max(8, n // 4)
    return {"N": 1, "H": 16, "W": 16, "C": c, "K": c, "R": 3, "S": 3}


def _conv_ops(s: dict[str, int]) -> int:
    return 2 * s["N"] * s["H"] * s["W"] * s["K"] * s["R"] * s["S"] * s["C"]


CPU_PATH = "qatlab CPU reference (exact, numpy)"


def cpu_reference_table(sizes: tuple[int, ...] = (128, 256, 512), repeats: int = 3) -> pd.DataFrame:
    """Throughput of qatlab's CPU reference int8 GEMM (M = N = K = size) and 3x3 conv
    (:func:`conv_shape`), each checked against an independent float64 result first."""
    import numpy as np
    import torch

    from qatlab.kernels import get_kernel

    if not sizes or any(int(n) < 1 for n in sizes):
        raise ValueError(f"sizes must be positive integers, got {sizes!r}")
    gemm, conv = get_kernel("int8_gemm", "cpu"), get_kernel("int8_conv2d", "cpu")
    rng = np.random.default_rng(0)
    rows = []
    for n in map(int, sizes):
        a = rng.integers(-128, 128, (n, n), dtype=np.int8)
        b = rng.integers(-128, 128, (n, n), dtype=np.int8)
        if not np.array_equal(gemm(a, b), (a.astype(np.float64) @ b.astype(np.float64).T).astype(np.int32)):
            raise AssertionError(f"int8 GEMM reference is not exact at {n}")  # a timing of a wrong result is worthless
        t = _median_s(lambda: gemm(a, b), repeats)
        rows.append({"kernel": "int8 GEMM", "shape": f"M=N=K={n}", "size": n, "GOPS": 2 * n**3 / t / 1e9, "time (ms)": 1e3 * t})
        s = conv_shape(n)
        x = rng.integers(-128, 128, (s["N"], s["H"], s["W"], s["C"]), dtype=np.int8)
        w = rng.integers(-128, 128, (s["K"], s["R"], s["S"], s["C"]), dtype=np.int8)
        want = torch.nn.functional.conv2d(
            torch.from_numpy(x).permute(0, 3, 1, 2).double(), torch.from_numpy(w).permute(0, 3, 1, 2).double(), padding=1
        ).permute(0, 2, 3, 1)
        if not np.array_equal(conv(x, w, padding=1), want.numpy().astype(np.int32)):
            raise AssertionError(f"int8 conv reference is not exact at C=K={s['C']}")
        t = _median_s(lambda: conv(x, w, padding=1), repeats)
        shape = f"3x3, {s['H']}x{s['W']} px, C=K={s['C']}"
        rows.append({"kernel": "int8 conv2d", "shape": shape, "size": n, "GOPS": _conv_ops(s) / t / 1e9, "time (ms)": 1e3 * t})
    out = pd.DataFrame(rows)
    out.insert(0, "path", CPU_PATH)
    return out


def gpu_available() -> bool:
    """A CUDA GPU and the CuPy that launches qatlab's kernels."""
    import torch

    if not torch.cuda.is_available():
        return False
    from qatlab.kernels import cuda_available

    return cuda_available()


def gpu_table(sizes: tuple[int, ...] = (256, 1024, 4096), repeats: int = 20) -> pd.DataFrame:
    """On the GPU: qatlab's tensor-core int8 GEMM against ``torch._int_mm`` (cuBLASLt),
    and its implicit-GEMM int8 conv against cuDNN's fp16 conv (channels-last), each of ours
    checked exact against a float64 result before timing. Sizes must be multiples of 8
    (``torch._int_mm``'s rule) and above 16."""
    import torch

    from qatlab.kernels import get_kernel

    bad = [n for n in sizes if int(n) <= 16 or int(n) % 8]
    if bad:
        raise ValueError(f"GPU sizes must be multiples of 8 above 16 (torch._int_mm), got {bad}")
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    gen = torch.Generator(device=dev).manual_seed(0)
    gemm, conv = get_kernel("int8_gemm", "cuda"), get_kernel("int8_conv2d", "cuda")
    rows = []
    for n in map(int, sizes):
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=dev, generator=gen)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=dev, generator=gen)  # [N, K]
        want = (a.double() @ b.double().t()).to(torch.int32)
        if not torch.equal(gemm(a, b), want):
            raise AssertionError(f"qatlab int8 GEMM is not exact at {n}")
        bt = b.t()  # [K, N], the column-major operand _int_mm takes
        ops = 2 * n**3
        for impl, fn in (("qatlab mma (tensor cores)", lambda: gemm(a, b)), ("torch._int_mm (cuBLASLt)", lambda: torch._int_mm(a, bt))):
            t = _median_s(fn, repeats, sync)
            rows.append(
                {
                    "kernel": "int8 GEMM",
                    "implementation": impl,
                    "shape": f"M=N=K={n}",
                    "size": n,
                    "TOPS": ops / t / 1e12,
                    "time (ms)": 1e3 * t,
                }
            )
        s = {**conv_shape(n), "N": 8, "H": 56, "W": 56}
        x = torch.randint(-128, 128, (s["N"], s["H"], s["W"], s["C"]), dtype=torch.int8, device=dev, generator=gen)
        w = torch.randint(-128, 128, (s["K"], s["R"], s["S"], s["C"]), dtype=torch.int8, device=dev, generator=gen)
        xn, wn = x.permute(0, 3, 1, 2).contiguous(), w.permute(0, 3, 1, 2).contiguous()
        want = torch.nn.functional.conv2d(xn.double(), wn.double(), padding=1).permute(0, 2, 3, 1).to(torch.int32)
        if not torch.equal(conv(x, w, padding=1), want):
            raise AssertionError(f"qatlab int8 conv is not exact at C=K={s['C']}")
        # cuDNN's fastest layout for fp16: NHWC memory seen as NCHW (channels-last). Timed
        # only: its sums overflow fp16, which does not change how long they take.
        xh, wh = x.permute(0, 3, 1, 2).half(), w.permute(0, 3, 1, 2).half()
        shape = f"3x3, N={s['N']}, {s['H']}x{s['W']} px, C=K={s['C']}"
        for impl, fn in (
            ("qatlab implicit GEMM (int8)", lambda: conv(x, w, padding=1)),
            ("cuDNN (fp16, channels-last)", lambda: torch.nn.functional.conv2d(xh, wh, padding=1)),
        ):
            t = _median_s(fn, repeats, sync)
            rows.append(
                {
                    "kernel": "conv2d",
                    "implementation": impl,
                    "shape": shape,
                    "size": n,
                    "TOPS": _conv_ops(s) / t / 1e12,
                    "time (ms)": 1e3 * t,
                }
            )
    return pd.DataFrame(rows)


def measure(sizes: tuple[int, ...], repeats: int, gpu_sizes: tuple[int, ...] = (256, 1024, 4096)) -> pd.DataFrame:
    """The GPU comparison where a GPU and the kernels are there, else the CPU reference path."""
    return gpu_table(gpu_sizes, max(repeats, 5)) if gpu_available() else cpu_reference_table(sizes, repeats)


def table_view(table: pd.DataFrame) -> Any:
    from .display import Table, format_frame

    return Table(format_frame(table.drop(columns=["size"]), keep=["path", "kernel", "implementation", "shape"]))


def plot_throughput(table: pd.DataFrame):
    """Throughput against size, one line per kernel (and implementation on a GPU)."""
    import matplotlib.pyplot as plt

    gpu = "implementation" in table
    unit = "TOPS" if gpu else "GOPS"
    fig, ax = plt.subplots(figsize=(6, 3.4))
    keys = ["kernel", "implementation"] if gpu else ["kernel"]
    for key, d in table.groupby(keys, sort=False):
        label = " — ".join(key) if isinstance(key, tuple) else str(key)
        ax.plot(d["size"], d[unit], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("size: GEMM M = N = K; conv channels = size / 4")
    ax.set_ylabel(f"throughput ({unit})")
    title = "GPU: qatlab kernels vs cuBLASLt and cuDNN" if gpu else f"{CPU_PATH}: int8 GEMM and conv2d (GPU {gpu_status()})"
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def key_findings(table: pd.DataFrame) -> list[str]:
    """Sentences with this run's numbers: what was measured and the peak throughput."""
    from .display import sig3

    if table.empty:
        return ["nothing was measured"]
    out = []
    if "implementation" in table:
        for kernel, d in table.groupby("kernel", sort=False):
            big = d[d["size"] == d["size"].max()]
            ours = big[big.implementation.str.startswith("qatlab")]
            other = big[~big.implementation.str.startswith("qatlab")]
            if len(ours) and len(other):
                r = float(ours.TOPS.iloc[0]) / float(other.TOPS.iloc[0])
                out.append(
                    f"{kernel} at {big.shape.iloc[0]}: qatlab {sig3(ours.TOPS.iloc[0])} TOPS, "
                    f"{other.implementation.iloc[0]} {sig3(other.TOPS.iloc[0])} TOPS ({sig3(r)}× theirs)."
                )
        return out
    out.append(
        f"No GPU here ({gpu_status()}): this page measures qatlab's own CPU reference kernels, the exact int8 twins "
        "the GPU kernels are checked against; they are built to be exact, not fast."
    )
    for kernel, d in table.groupby("kernel", sort=False):
        r = d.loc[d["GOPS"].idxmax()]
        out.append(f"{kernel}: up to {sig3(r['GOPS'])} GOPS ({r['shape']}, {sig3(r['time (ms)'])} ms per call).")
    return out
