"""`workbook export onnx`: placeholder until the ONNX export lands (issue 10)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a trained model.pt (from a trial's folder)")
    p.add_argument("out", help="the .onnx file to write")


def run(args: argparse.Namespace) -> int:
    from workbook.cli import CommandError

    raise CommandError("'workbook export onnx' is not built yet (issue 10)")
