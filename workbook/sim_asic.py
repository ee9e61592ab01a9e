"""`workbook sim asic`: placeholder until the asic simulator lands; see the issue tracker."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare this command's options (kept import-light: no torch here)."""


def run(args: argparse.Namespace) -> int:
    from workbook.cli import CommandError

    raise CommandError("'workbook sim asic' is not built yet")
