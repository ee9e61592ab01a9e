"""`workbook sweep`: placeholder until the Ray sweep runner lands (issue 4)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="spec name (workbook/specs/NAME.yaml) or YAML file")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--out", default=None, help="output directory")


def run(args: argparse.Namespace) -> int:
    from workbook.cli import CommandError

    raise CommandError("'workbook sweep' is not built yet (issue 4)")
