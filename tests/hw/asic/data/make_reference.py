"""Regenerate the SCALE-Sim 3.0.0 reference figures kept in this folder (not run by the tests).

SCALE-Sim is not a dependency of qatlab; install it in a scratch environment (it needs
NumPy < 2.4) and point this script at that environment's Python::

    python3 -m venv /tmp/scalesim-venv
    /tmp/scalesim-venv/bin/pip install scalesim==3.0.0 'numpy<2.4'
    python tests/hw/asic/data/make_reference.py --scalesim-python /tmp/scalesim-venv/bin/python [CASE ...]

For every case of ``cases.json`` (a config under ``configs/`` and a topology under
``topologies/``) it runs SCALE-Sim in a subprocess and appends its three report files,
verbatim, to ``scalesim_reports/*.csv`` with a leading ``Case`` column. Only SCALE-Sim's
numbers are kept, never its code.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qatlab.atomic import atomic_path, write_json

HERE = Path(__file__).resolve().parent
REPORTS = ("COMPUTE_REPORT.csv", "BANDWIDTH_REPORT.csv", "DETAILED_ACCESS_REPORT.csv")

# Runs inside the scratch environment: SCALE-Sim's documented Python entry point.
RUNNER = r"""
import sys
from scalesim.scale_sim import scalesim
cfg, topo, layout, out, kind = sys.argv[1:6]
s = scalesim(save_disk_space=True, verbose=False, config=cfg, topology=topo, layout=layout,
             input_type_gemm=(kind == "gemm"))
s.run_scale(top_path=out)
"""


def run_case(py: str, case: dict) -> tuple[dict[str, str], float]:
    with tempfile.TemporaryDirectory() as tmp:
        layout = Path(tmp) / "layout.csv"
        layout.write_text("Layer name,\n")  # SCALE-Sim 3.0.0 opens a layout file even when unused
        t0 = time.perf_counter()
        subprocess.run(
            [py, "-c", RUNNER, str(HERE / case["config"]), str(HERE / case["topology"]), str(layout), tmp, case["kind"]],
            check=True,
            capture_output=True,
            text=True,
        )
        dt = time.perf_counter() - t0
        run_dir = next(p for p in Path(tmp).iterdir() if p.is_dir())
        return {r: (run_dir / r).read_text() for r in REPORTS}, dt


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in r if c.strip() != ""] for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scalesim-python", required=True, help="python of an environment with scalesim==3.0.0")
    ap.add_argument("cases", nargs="*", help="case names (default: all)")
    args = ap.parse_args()
    cases = json.loads((HERE / "cases.json").read_text())
    wanted = set(args.cases) or {c["name"] for c in cases}
    out_dir = HERE / "scalesim_reports"
    out_dir.mkdir(exist_ok=True)
    existing: dict[str, list[list[str]]] = {}
    headers: dict[str, list[str]] = {}
    for r in REPORTS:
        p = out_dir / r
        if p.exists():
            rows = _rows(p.read_text())
            headers[r], existing[r] = rows[0], rows[1:]
        else:
            existing[r] = []
    order = {c["name"]: i for i, c in enumerate(cases)}

    def save() -> None:
        for r in REPORTS:
            if r not in headers:
                continue
            rows = sorted(existing[r], key=lambda row: (order.get(row[0], 1 << 30), int(row[1])))
            with atomic_path(out_dir / r) as tmp, open(tmp, "w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(headers[r])
                w.writerows(rows)
        write_json(HERE / "cases.json", cases)

    for case in cases:
        if case["name"] not in wanted:
            continue
        texts, dt = run_case(args.scalesim_python, case)
        case["scalesim_seconds"] = round(dt, 2)
        for r in REPORTS:
            rows = _rows(texts[r])
            headers[r] = ["Case", *rows[0]]
            existing[r] = [row for row in existing[r] if row[0] != case["name"]] + [[case["name"], *row] for row in rows[1:]]
        print(f"{case['name']}: {dt:.1f} s", flush=True)
        save()  # after every case: SCALE-Sim runs are long, a later failure keeps the earlier ones
    return 0


if __name__ == "__main__":
    sys.exit(main())
