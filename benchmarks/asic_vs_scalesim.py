"""The same topology through SCALE-Sim 3.0.0 and through qatlab.hw.asic, in one run.

    python benchmarks/asic_vs_scalesim.py [--config CFG] [--topology CSV] [--scalesim-python PY] [--json FILE]

SCALE-Sim is not a qatlab dependency. It is used when importable here, or when
``--scalesim-python`` names the Python of an environment that has it (it runs in a
subprocess there; install: ``pip install scalesim==3.0.0 'numpy<2.4'``). Without it the
script says so and times only ours.

Ours runs twice: the closed form (``dram_model="fast"``, the default: DRAM read counts
are estimates once an operand overflows its SRAM) and with SCALE-Sim's buffers replayed
(``dram_model="exact"``). For each, it prints per layer whether every SCALE-Sim-named
field agrees, the wall and CPU times (SCALE-Sim: one run, it is slow; ours: median of
``--repeats`` runs, file reading included) and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from qatlab.atomic import write_json  # noqa: E402
from qatlab.hw.asic import ArrayConfig, simulate  # noqa: E402
from qatlab.hw.asic.scalesim_reports import read_scalesim_reports  # noqa: E402
from qatlab.hw.workload import read_topology  # noqa: E402

DATA = ROOT / "tests" / "hw" / "asic" / "data"
FIELDS = [
    "total_cycles",
    "total_cycles_incl_prefetch",
    "stall_cycles",
    "overall_util_pct",
    "mapping_eff_pct",
    "compute_util_pct",
    "sram_ifmap_reads",
    "sram_filter_reads",
    "sram_ofmap_writes",
    "dram_ifmap_reads",
    "dram_filter_reads",
    "dram_ofmap_writes",
]
RUNNER = r"""
import sys, time
from scalesim.scale_sim import scalesim
cfg, topo, layout, out, kind = sys.argv[1:6]
t0, c0 = time.perf_counter(), time.process_time()
s = scalesim(save_disk_space=True, verbose=False, config=cfg, topology=topo, layout=layout, input_type_gemm=(kind == "gemm"))
s.run_scale(top_path=out)
print("SCALESIM_SECONDS", time.perf_counter() - t0, time.process_time() - c0)
"""


def is_gemm(topology: Path) -> bool:
    head = topology.read_text().splitlines()[0].split(",")
    return [h.strip().upper() for h in head[1:4]] == ["M", "N", "K"]


def run_scalesim(py: str | None, cfg: Path, topo: Path) -> tuple[float, float, list[dict]] | None:
    """(wall seconds, CPU seconds, per-layer figures) from SCALE-Sim, or None when it is not available."""
    if py is None:
        try:
            import scalesim  # noqa: F401
        except ImportError:
            return None
        py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        layout = Path(tmp) / "layout.csv"
        layout.write_text("Layer name,\n")  # SCALE-Sim 3.0.0 opens a layout file even when unused
        kind = "gemm" if is_gemm(topo) else "conv"
        p = subprocess.run([py, "-c", RUNNER, str(cfg), str(topo), str(layout), tmp, kind], capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"SCALE-Sim failed:\n{p.stderr[-2000:]}")
        wall, cpu = (float(x) for x in p.stdout.split("SCALESIM_SECONDS")[-1].split())
        run_dir = next(d for d in Path(tmp).iterdir() if d.is_dir())
        return wall, cpu, read_scalesim_reports(run_dir)


def time_ours(cfg: Path, topo: Path, repeats: int, dram_model: str) -> tuple[float, float, list]:
    """(median wall seconds, median CPU seconds, records), files read on every repeat."""
    walls, cpus, rep = [], [], None
    simulate(read_topology(topo), ArrayConfig.from_cfg(cfg, dram_model=dram_model))  # warm-up (imports, caches)
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        rep = simulate(read_topology(topo), ArrayConfig.from_cfg(cfg, dram_model=dram_model))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), rep.layers  # type: ignore[union-attr]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=DATA / "configs" / "scale.cfg")
    ap.add_argument("--topology", type=Path, default=DATA / "topologies" / "Resnet18_tail.csv")
    ap.add_argument("--scalesim-python", default=os.environ.get("SCALESIM_PYTHON"), help="python with scalesim==3.0.0")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    ours = {
        mode: time_ours(args.config, args.topology, args.repeats if mode == "fast" else max(1, args.repeats // 3), mode)
        for mode in ("fast", "exact")
    }
    n_layers = len(ours["fast"][2])
    print(f"config {args.config.name}, topology {args.topology.name}: {n_layers} layers")
    out: dict = {"config": args.config.name, "topology": args.topology.name, "layers": n_layers}
    ss = run_scalesim(args.scalesim_python, args.config, args.topology)
    if ss is None:
        print("SCALE-Sim is not installed here (and no --scalesim-python): timing ours only")
    else:
        print(f"SCALE-Sim 3.0.0: {ss[0]:.2f} s wall, {ss[1]:.2f} s CPU")
        out |= {"scalesim_wall_s": ss[0], "scalesim_cpu_s": ss[1]}
    for mode, (wall, cpu, records) in ours.items():
        print(f"ours, dram_model={mode}: {wall * 1e3:.2f} ms wall, {cpu * 1e3:.2f} ms CPU (median)")
        out[mode] = {"wall_s": wall, "cpu_s": cpu}
        if ss is None:
            continue
        ss_wall, ss_cpu, ref = ss
        differing: dict[str, int] = {}
        for r, o in zip(ref, records):
            bad = [f for f in FIELDS if r[f] != getattr(o, f)]
            for f in bad:
                differing[f] = differing.get(f, 0) + 1
            status = "all fields equal" if not bad else "differ: " + ", ".join(f"{f} {r[f]} vs {getattr(o, f)}" for f in bad)
            print(f"  {o.layer:<14} cycles {o.total_cycles:>9}  {status}")
        # Wall time is what a user waits; CPU time is robust on a shared machine.
        ratio, ratio_cpu = ss_wall / wall, ss_cpu / cpu
        total = len(ref) * len(FIELDS)
        equal = total - sum(differing.values())
        print(
            f"  ratio: {ratio:,.0f}x wall, {ratio_cpu:,.0f}x CPU; fields equal: {equal} / {total}"
            + (f"; differing: {differing}" if differing else "")
        )
        out[mode] |= {"ratio_wall": ratio, "ratio_cpu": ratio_cpu, "fields_equal": equal, "fields_total": total, "differing": differing}
    if args.json:
        write_json(args.json, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
