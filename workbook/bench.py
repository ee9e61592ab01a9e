"""Benchmarks behind ``workbook bench`` and ``benchmarks/*.py``.

Each figure is a ratio against a baseline timed in the same run, interleaved,
because the machines are shared and noisy: absolute seconds mean little.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from qatlab.atomic import write_json


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each fn, run round-robin so drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            samples[k].append(_median_time(fn, 1))
    return {k: statistics.median(v) for k, v in samples.items()}


def fakequant(size: int = 4096, repeats: int = 15) -> list[dict[str, object]]:
    """Forward+backward of our ``fake_quantize`` vs torch's native fused op.

    Three timings per case: ``native`` (torch op, qparams given), ``ours_fixed``
    (our API, same qparams given: validation + dispatch overhead) and ``ours``
    (our API estimating the range with minmax each call, as a QAT step does).
    """
    from qatlab.quant import QuantSpec, compute_qparams, fake_quantize

    torch.manual_seed(0)
    x = torch.randn(size, size, requires_grad=True)
    grad = torch.randn(size, size)
    rows = []
    for gran in ("tensor", "channel"):
        for bits in (8, 4):
            spec = QuantSpec(bits=bits, granularity=gran)
            qp = compute_qparams(x.detach(), spec)

            def native() -> None:
                if gran == "tensor":
                    y = torch.fake_quantize_per_tensor_affine(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
                else:
                    y = torch.fake_quantize_per_channel_affine(x, qp.scale, qp.zero_point, 0, qp.qmin, qp.qmax)
                y.backward(grad)
                x.grad = None

            def ours_fixed() -> None:
                fake_quantize(x, spec, qp).backward(grad)
                x.grad = None

            def ours() -> None:
                fake_quantize(x, spec).backward(grad)
                x.grad = None

            t = interleaved({"native": native, "ours_fixed": ours_fixed, "ours": ours}, repeats=repeats)
            rows.append(
                {
                    "granularity": gran,
                    "bits": bits,
                    "shape": f"{size}x{size}",
                    "native_ms": round(t["native"] * 1e3, 2),
                    "ours_fixed_ms": round(t["ours_fixed"] * 1e3, 2),
                    "ours_ms": round(t["ours"] * 1e3, 2),
                    "ratio_fixed": round(t["ours_fixed"] / t["native"], 3),
                    "ratio": round(t["ours"] / t["native"], 3),
                }
            )
    return rows


def machine() -> dict[str, object]:
    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


TARGETS: dict[str, Callable[[], list[dict[str, object]]]] = {"fakequant": fakequant}
# Targets whose benchmark is a script in benchmarks/ (they need a GPU, or a scratch SCALE-Sim).
SCRIPTS = {"kernels": ("kernels.py",), "sim": ("asic_vs_scalesim.py", "fpga.py")}


def _run_scripts(names: tuple[str, ...], json_path: str | None) -> int:
    import runpy
    import sys
    from pathlib import Path

    from workbook.cli import CommandError

    root = Path(__file__).resolve().parent.parent / "benchmarks"
    rc = 0
    for name in names:
        script = root / name
        if not script.exists():
            raise CommandError(f"{script} is missing (run from a source checkout)")
        argv = [str(script)] + (["--json", json_path] if json_path and name == "kernels.py" else [])
        old = sys.argv
        sys.argv = argv
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as e:  # the scripts end with sys.exit(main())
            rc = rc or int(e.code or 0)
        finally:
            sys.argv = old
    return rc


def run(args: argparse.Namespace) -> int:
    from workbook.cli import CommandError

    if args.target in SCRIPTS:
        return _run_scripts(SCRIPTS[args.target], args.json)
    if args.target not in TARGETS:
        raise CommandError(f"bench target {args.target!r} is unknown")
    rows = TARGETS[args.target]()
    print(json.dumps({"machine": machine()}))
    for r in rows:
        print(json.dumps(r))
    if args.json:
        write_json(args.json, {"target": args.target, "machine": machine(), "rows": rows})
    return 0
