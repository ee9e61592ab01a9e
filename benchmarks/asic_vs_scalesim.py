"""The same topology through SCALE-Sim 3.0.0 and through qatlab.hw.asic, in one run.

    python benchmarks/asic_vs_scalesim.py [--config CFG] [--topology CSV] [--cli-topology CSV]
                                          [--scalesim-python PY] [--json FILE] [--user-mode]

SCALE-Sim is not a qatlab dependency. It is used when importable here, or when
``--scalesim-python`` names the Python of an environment that has it (it runs in a
subprocess there; install: ``pip install scalesim==3.0.0 'numpy<2.4'``). Without it the
script says so and times only ours.

Two comparisons:

1. In-process, on ``--topology``: SCALE-Sim's simulation (one run, it is slow) against
   ours, twice: the default (``dram_model="fast"``: closed forms, SCALE-Sim's buffers
   replayed only where no closed form exists) and the replay wherever a count is not
   trivial (``dram_model="exact"``, the reference). Ours: median of ``--repeats`` runs,
   file reading included. Per layer: whether every SCALE-Sim-named field agrees.
2. Whole processes, on ``--cli-topology``: ``workbook sim asic --format json`` against
   SCALE-Sim's command line (``python -m scalesim.scale``), start-up and file writing
   included; CPU time from the operating system's accounting of the child.

``--user-mode`` times only our USER-mode read buffers on a few overflowing layers: the
default (from miss to miss, drain to drain) against the row-by-row replay
(``dram_model="exact"``), and checks that their figures agree.

CPU time is the robust figure on a shared machine; wall time is reported beside it.
"""

from __future__ import annotations

import argparse
import os
import resource
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
from qatlab.hw.asic.trace import clear_replay_cache  # noqa: E402
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


def scalesim_python(py: str | None) -> str | None:
    if py is not None:
        return py
    try:
        import scalesim  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def run_scalesim(py: str, cfg: Path, topo: Path) -> tuple[float, float, list[dict]]:
    """(wall seconds, CPU seconds, per-layer figures) of SCALE-Sim's simulation, measured inside its process."""
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
    simulate(read_topology(topo), ArrayConfig.from_cfg(cfg, dram_model=dram_model))  # warm-up (imports)
    for _ in range(repeats):
        clear_replay_cache()  # every run replays what it needs: a cold network, not a memo lookup
        t0, c0 = time.perf_counter(), time.process_time()
        rep = simulate(read_topology(topo), ArrayConfig.from_cfg(cfg, dram_model=dram_model))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), rep.layers  # type: ignore[union-attr]


def time_process(cmd: list[str], cwd: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def compare_processes(py: str | None, cfg: Path, topo: Path, repeats: int) -> dict:
    """Whole `workbook sim asic` processes against SCALE-Sim's command line."""
    workbook = str(Path(sys.executable).parent / "workbook")
    ours_cmd = [workbook, "sim", "asic", "--config", str(cfg), "--topology", str(topo), "--format", "json"]
    # As an installed package runs: compiled bytecode cached (in a scratch folder here,
    # whatever PYTHONDONTWRITEBYTECODE the shell sets), the first run warming the cache.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="pycache-")
    time_process(ours_cmd, str(ROOT), env)
    ours = [time_process(ours_cmd, str(ROOT), env) for _ in range(repeats)]
    out = {"topology": topo.name, "ours_wall_s": statistics.median(w for w, _ in ours), "ours_cpu_s": statistics.median(c for _, c in ours)}
    print(
        f"workbook sim asic on {topo.name}: {out['ours_wall_s'] * 1e3:.0f} ms wall, {out['ours_cpu_s'] * 1e3:.0f} ms CPU (median of {repeats})"
    )
    if py is None:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        layout = Path(tmp) / "layout.csv"
        layout.write_text("Layer name,\n")
        kind = "gemm" if is_gemm(topo) else "conv"
        cmd = [py, "-m", "scalesim.scale", "-c", str(cfg), "-t", str(topo), "-l", str(layout), "-p", tmp, "-i", kind, "-s", "N"]
        wall, cpu = time_process(cmd, tmp, env)
    out |= {"scalesim_wall_s": wall, "scalesim_cpu_s": cpu, "ratio_wall": wall / out["ours_wall_s"], "ratio_cpu": cpu / out["ours_cpu_s"]}
    print(
        f"SCALE-Sim 3.0.0 command line: {wall:.2f} s wall, {cpu:.2f} s CPU; ratio {out['ratio_wall']:,.0f}x wall, {out['ratio_cpu']:,.0f}x CPU"
    )
    return out


def time_user_mode(repeats: int) -> list[dict]:
    """USER mode with 4 kB read SRAMs (overflowing): the default (miss to miss, drain to drain) against the row-by-row replay."""
    from qatlab.hw.asic.dataflow import ArrayMapping
    from qatlab.hw.asic.simulate import scalesim_m
    from qatlab.hw.asic.trace import IfmapAddresses
    from qatlab.hw.asic.user_replay import user_replay, user_replay_events
    from qatlab.hw.workload import Layer

    out = []
    for h, df in ((20, "ws"), (40, "ws"), (40, "os"), (40, "is"), (60, "ws")):
        layer = Layer("c", h, h, 3, 3, 64, 64)
        m = ArrayMapping(df, 32, 32, scalesim_m(layer), layer.N, layer.K)
        a = IfmapAddresses(h, h, 3, 3, 64, 1, 1)
        args = (m, a, (4096, 4096, 65536), (10, 10, 10))
        row = {"layer": f"{h}x{h}x64 3x3, {df}", "steps": m.sram_ifmap_reads + m.sram_filter_reads + m.compute_rows}
        for name, fn in (("events", user_replay_events), ("replay", user_replay)):
            cpus = []
            for _ in range(repeats):
                c0 = time.process_time()
                row[f"{name}_result"] = fn(*args)
                cpus.append(time.process_time() - c0)
            row[f"{name}_cpu_s"] = statistics.median(cpus)
        row["equal"] = row.pop("events_result") == row.pop("replay_result")
        print(
            f"USER mode {row['layer']}: {row['steps']} steps, events {row['events_cpu_s']:.2f} s, "
            f"replay {row['replay_cpu_s']:.2f} s CPU, equal: {row['equal']}"
        )
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=DATA / "configs" / "scale.cfg")
    ap.add_argument("--topology", type=Path, default=DATA / "topologies" / "Resnet18_tail.csv")
    ap.add_argument("--cli-topology", type=Path, default=ROOT / "examples" / "lenet.csv", help="the small net of the process comparison")
    ap.add_argument("--scalesim-python", default=os.environ.get("SCALESIM_PYTHON"), help="python with scalesim==3.0.0")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip-in-process", action="store_true", help="only the process comparison")
    ap.add_argument("--user-mode", action="store_true", help="only the USER-mode read buffers: events against the replay")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--scalesim-cpu-s",
        type=float,
        default=None,
        help="without SCALE-Sim here: its CPU seconds on --topology from an earlier run, for the ratio",
    )
    ap.add_argument(
        "--reference",
        default=None,
        help="without SCALE-Sim here: compare the fields with this case's committed SCALE-Sim reports "
        "(tests/hw/asic/data/scalesim_reports, e.g. Resnet18__scale)",
    )
    args = ap.parse_args()
    if args.user_mode:
        rows = time_user_mode(args.repeats)
        if args.json:
            write_json(args.json, {"user_mode": rows}, indent=2)
        return 0
    py = scalesim_python(args.scalesim_python)
    if py is None:
        print("SCALE-Sim is not installed here (and no --scalesim-python): timing ours only")
    out: dict = {"config": args.config.name}
    out["process"] = compare_processes(py, args.config, args.cli_topology, args.repeats)
    if args.skip_in_process:
        if args.json:
            write_json(args.json, out, indent=2)
        return 0

    ours = {
        mode: time_ours(args.config, args.topology, args.repeats if mode == "fast" else max(1, args.repeats // 3), mode)
        for mode in ("fast", "exact")
    }
    n_layers = len(ours["fast"][2])
    print(f"config {args.config.name}, topology {args.topology.name}: {n_layers} layers")
    out |= {"topology": args.topology.name, "layers": n_layers}
    ss = run_scalesim(py, args.config, args.topology) if py else None
    if ss is not None:
        print(f"SCALE-Sim 3.0.0: {ss[0]:.2f} s wall, {ss[1]:.2f} s CPU")
        out |= {"scalesim_wall_s": ss[0], "scalesim_cpu_s": ss[1]}
    elif args.scalesim_cpu_s is not None and args.reference:
        # SCALE-Sim's figures from its committed reports, its time from an earlier run: no wall ratio.
        ss = (float("nan"), args.scalesim_cpu_s, read_scalesim_reports(DATA / "scalesim_reports", args.reference))
        print(f"SCALE-Sim 3.0.0 (earlier run, not timed here): {args.scalesim_cpu_s:.2f} s CPU; fields from {args.reference}")
        out |= {"scalesim_cpu_s": args.scalesim_cpu_s, "scalesim_cpu_from_earlier_run": True, "reference": args.reference}
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
        ratio, ratio_cpu = (None if ss_wall != ss_wall else ss_wall / wall), ss_cpu / cpu  # NaN: no wall time
        total = len(ref) * len(FIELDS)
        equal = total - sum(differing.values())
        wall_ratio = "no wall ratio" if ratio is None else f"{ratio:,.0f}x wall"
        print(
            f"  ratio: {wall_ratio}, {ratio_cpu:,.0f}x CPU; fields equal: {equal} / {total}"
            + (f"; differing: {differing}" if differing else "")
        )
        out[mode] |= {"ratio_wall": ratio, "ratio_cpu": ratio_cpu, "fields_equal": equal, "fields_total": total, "differing": differing}
    if args.json:
        write_json(args.json, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
