"""A cfg + topology simulation imports neither numpy nor any heavy framework.

The closed forms are pure Python; numpy serves only the replays (``dram_model="exact"``,
or a layer with no closed form), so the command's start-up stays a few tens of ms.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import io, json, sys, contextlib
from workbook.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["sim", "asic", "--config", sys.argv[1], "--topology", sys.argv[2], "--format", "json"])
heavy = sorted(m for m in ("numpy", "torch", "pandas", "ray", "scipy") if m in sys.modules)
print(json.dumps({"rc": rc, "heavy": heavy, "out": len(out.getvalue())}))
"""


def test_sim_asic_imports_nothing_heavy():
    p = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "examples" / "scale.cfg"), str(ROOT / "examples" / "lenet.csv")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0 and res["out"] > 0
    assert res["heavy"] == []


def test_closed_forms_import_no_numpy():
    code = (
        "import sys\n"
        "from qatlab.hw.asic import ArrayConfig, simulate\n"
        "from qatlab.hw.workload import Layer\n"
        # operands that overflow their SRAMs, all covered by closed forms
        "simulate([Layer('c', 56, 56, 1, 1, 64, 64), Layer.gemm('g', 64, 256, 784)], ArrayConfig())\n"
        "print('numpy' in sys.modules)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
