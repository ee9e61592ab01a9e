"""FPGA dataflow model: folding-search time (LeNet-like CNN, ResNet-18 on ZCU104) and the
cycle-stepped simulation's speed (cycles simulated per second).

    python benchmarks/fpga.py [--repeats 5] [--frames 4]

Every search runs under both cost models (``finn``, the default: FINN's own estimates;
``qatlab``: also what FINN leaves uncounted, with the HLS sliding window).
Prints one JSON object per line: the machine, then one per measurement. Search times
are the median of ``--repeats`` runs in this process (``cold`` is the first, before
the cost model's small caches are warm). The stepped simulation is checked against the
integer reference (bit for bit) and the analytic model (latency, interval) as it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from qatlab.hw import fpga
from qatlab.hw.fpga.model import layer_specs
from qatlab.hw.workload import Layer, read_topology

DATA = Path(__file__).resolve().parent.parent / "tests" / "hw" / "fpga" / "data"


def machine() -> dict[str, object]:
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def search_case(
    name: str, topology: str, bits: int, device: str, repeats: int, target_fps: float | None = None, cost_model: str = "finn"
) -> dict:
    layers = [replace(lay, w_bits=bits, a_bits=bits) for lay in read_topology(DATA / topology)]
    specs = layer_specs(layers, cost_model=cost_model)
    dev = fpga.get_device(device)
    times, outcome = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            sr = fpga.search_folding(specs, dev, dev.default_clock_mhz, target_fps=target_fps)
            outcome = {"result": "fits", "fps": round(sr.fps, 1), "ii_cycles": sr.ii_cycles, "bottleneck": sr.bottleneck, "usage": sr.usage}
        except fpga.FpgaError as e:
            outcome = {"result": type(e).__name__, "message": str(e)}
        times.append(time.perf_counter() - t0)
    row = {
        "bench": "search",
        "case": name,
        "cost_model": cost_model,
        "layers": len(layers),
        "device": device,
        "w_a_bits": bits,
        "target_fps": target_fps,
        "cold_s": round(times[0], 4),
        "median_s": round(statistics.median(times), 4),
    }
    row.update(outcome)
    if outcome.get("result") == "fits":
        t0 = time.perf_counter()
        rep = fpga.analyze(layers, device, folding=sr.folding([lay.name for lay in layers]), cost_model=cost_model)
        row["analyze_with_schedule_s"] = round(time.perf_counter() - t0, 3)
        row["latency_cycles"] = rep.totals["latency_cycles"]
        row["lut"], row["dsp"], row["bram18"], row["uram"] = (rep.totals[k] for k in ("lut", "dsp", "bram18", "uram"))
    return row


def _stream_net(rng: np.random.Generator) -> tuple[list[Layer], list[fpga.IntLayer]]:
    """A chained LeNet-like CNN small enough for the stepped simulation."""
    layers = [
        Layer("conv1", 14, 14, 3, 3, 1, 8),
        Layer("conv2", 12, 12, 3, 3, 8, 16, 2, 2),
        Layer("fc1", 1, 1, 1, 1, 400, 32),
        Layer("fc2", 1, 1, 1, 1, 32, 10),
    ]
    params = []
    for i, lay in enumerate(layers):
        g = fpga.geometry(lay)
        w = rng.integers(-128, 128, size=(g.mh, g.mw))
        last = i == len(layers) - 1
        span = float(np.abs(w).sum(axis=1).max()) * 256
        params.append(fpga.IntLayer(w, rng.integers(-500, 500, g.mh), None if last else np.full(g.mh, 256 / span * 2), 0, 0, 255))
    return layers, params


def stream_case(frames: int) -> list[dict]:
    rng = np.random.default_rng(0)
    layers, params = _stream_net(rng)
    x = rng.integers(0, 256, size=(frames, 14 * 14))
    ref = np.stack([fpga.reference_forward(layers, params, f)[-1] for f in x])
    rows = []
    foldings = {
        "unfolded (PE=SIMD=1)": {"*": fpga.LayerFolding()},
        "balanced": {
            "conv1": fpga.LayerFolding(4, 9),
            "conv2": fpga.LayerFolding(8, 24),
            "fc1": fpga.LayerFolding(8, 50),
            "fc2": fpga.LayerFolding(2, 8),
        },
    }
    for name, folds in foldings.items():
        # The stepped simulation runs the HLS sliding window: the qatlab cost model's.
        rep = fpga.analyze(layers, "ZCU104", folding=folds, params=params, cost_model="qatlab")
        res = fpga.simulate(layers, params, folds, x)
        assert np.array_equal(res.outputs, ref), "stepped simulation differs from the integer reference"
        assert res.latency_cycles == rep.totals["latency_cycles"] and res.interval_cycles == rep.totals["ii_cycles"]
        rows.append(
            {
                "bench": "stepped",
                "folding": name,
                "frames": frames,
                "units": len(res.stage_names),
                "cycles": res.cycles,
                "wall_s": round(res.wall_s, 3),
                "cycles_per_s": round(res.cycles_per_s),
                "latency_cycles": res.latency_cycles,
                "interval_cycles": res.interval_cycles,
                "matches_reference": True,
                "matches_analytic": True,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=4)
    a = ap.parse_args()
    print(json.dumps({"machine": machine()}))
    cases = [
        ("lenet fastest", "lenet.csv", 8, "ZCU104", None),
        ("lenet 5000 fps", "lenet.csv", 8, "ZCU104", 5000.0),
        ("resnet18 fastest", "resnet18.csv", 8, "ZCU104", None),
        ("resnet18 fastest", "resnet18.csv", 4, "ZCU104", None),
        ("resnet18 fastest", "resnet18.csv", 2, "ZCU104", None),
        ("resnet18 fastest", "resnet18.csv", 8, "U250", None),
        ("resnet18 fastest", "resnet18.csv", 4, "U250", None),
        ("resnet18 fastest", "resnet18.csv", 2, "U250", None),
    ]
    for cost_model in ("finn", "qatlab"):
        for name, topo, bits, dev, target in cases:
            print(json.dumps(search_case(name, topo, bits, dev, a.repeats, target, cost_model)))
    for row in stream_case(a.frames):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
