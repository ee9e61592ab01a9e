"""``workbook bench TARGET``: runs the benchmark scripts in ``benchmarks/`` as programs.

The benchmarks themselves live in ``benchmarks/`` (each also runs on its own as
``python benchmarks/NAME.py``). This module only names them and runs them in this
process with :mod:`runpy`; it imports nothing from them, and they import nothing from
here, so the two never form a cycle.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from workbook.errors import CommandError

# target -> the scripts it runs, in order (kernels needs a GPU, sim a scratch SCALE-Sim).
SCRIPTS: dict[str, tuple[str, ...]] = {
    "fakequant": ("fakequant.py",),
    "kernels": ("kernels.py",),
    "sim": ("asic_vs_scalesim.py", "fpga.py"),
}
# The scripts that take ``--json FILE`` (the others write their figures to stdout only).
JSON_SCRIPTS = frozenset({"fakequant.py", "kernels.py"})
BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def _run_script(script: Path, argv: list[str]) -> int:
    old = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:  # a script may end with sys.exit(main())
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr)  # sys.exit("message") means status 1, as for a program
        return 1
    finally:
        sys.argv = old
    return 0


def run_scripts(names: tuple[str, ...], json_path: str | None, root: Path = BENCHMARKS_DIR) -> int:
    """Run each script under ``root``; the first non-zero exit status is the result."""
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise CommandError(f"benchmark script missing: {', '.join(str(root / n) for n in missing)} (run from a source checkout)")
    if json_path is not None and not any(name in JSON_SCRIPTS for name in names):
        raise CommandError(f"--json is not supported by {', '.join(names)} (figures go to stdout only)")
    rc = 0
    for name in names:
        argv = ["--json", json_path] if json_path is not None and name in JSON_SCRIPTS else []
        status = _run_script(root / name, argv)  # every script runs, even after a failure
        rc = rc or status
    return rc


def run(args: argparse.Namespace) -> int:
    if args.target not in SCRIPTS:
        raise CommandError(f"bench target {args.target!r} is unknown; expected one of {', '.join(SCRIPTS)}")
    return run_scripts(SCRIPTS[args.target], args.json)
