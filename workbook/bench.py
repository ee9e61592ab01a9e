"""``workbook bench TARGET``: runs the benchmark scripts in ``benchmarks/`` as programs.

The benchmarks themselves live in ``benchmarks/`` (each also runs on its own as
``python benchmarks/NAME.py``). This module only names them and runs them in this
process with :mod:`runpy`; it imports nothing from them, and they import nothing from
here, so the two never form a cycle.
"""

from __future__ import annotations

import argparse
import json
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
JSON_SCRIPTS = frozenset({"fakequant.py", "kernels.py", "asic_vs_scalesim.py"})
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


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def run_scripts(names: tuple[str, ...], json_path: str | None, root: Path = BENCHMARKS_DIR) -> int:
    """Run each script under ``root``; the first non-zero exit status is the result.

    With ``json_path``: one script that takes ``--json`` writes it directly; several
    write temp files beside it, merged into one object keyed by script name and written
    atomically. A run that succeeds without producing the file is an error (exit 1),
    never a silent success.
    """
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise CommandError(f"benchmark script missing: {', '.join(str(root / n) for n in missing)} (run from a source checkout)")
    takers = [name for name in names if name in JSON_SCRIPTS]
    out = Path(json_path) if json_path is not None else None
    if out is not None:
        if not takers:
            raise CommandError(f"--json is not supported by {', '.join(names)} (figures go to stdout only)")
        if out.is_dir():
            raise CommandError("is a folder", str(out), "give a file name for --json")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise CommandError("no such folder", str(out.parent), "create it first or write --json elsewhere")
        others = [n for n in names if n not in JSON_SCRIPTS]
        if others:
            print(
                f"workbook: note: {', '.join(others)} print their figures to stdout only; {out} holds {', '.join(takers)}'s",
                file=sys.stderr,
            )
    before = _stamp(out) if out is not None else None
    parts = {name: out.with_name(f".{out.name}.{Path(name).stem}.part") for name in takers} if out is not None and len(takers) > 1 else {}
    rc = 0
    try:
        for name in names:
            argv: list[str] = []
            if out is not None and name in JSON_SCRIPTS:
                argv = ["--json", str(parts.get(name, out))]
            status = _run_script(root / name, argv)  # every script runs, even after a failure
            rc = rc or status
        if parts:
            merged = {}
            for name, part in parts.items():
                if part.is_file():
                    merged[Path(name).stem] = json.loads(part.read_text(encoding="utf-8"))
            if merged:
                from qatlab.atomic import write_json

                write_json(out, merged, indent=2, mkdir=False)
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)
    if out is not None and rc == 0 and _stamp(out) in (None, before):
        raise CommandError(f"the benchmark finished but wrote no figures to {out}", fix="see its output above", code=1)
    return rc


def run(args: argparse.Namespace) -> int:
    if args.target not in SCRIPTS:
        raise CommandError(f"bench target {args.target!r} is unknown; expected one of {', '.join(SCRIPTS)}")
    return run_scripts(SCRIPTS[args.target], args.json)
