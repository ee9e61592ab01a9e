"""What the fused-kernel benchmark scripts share: their common options and their start."""

from __future__ import annotations

import argparse
import json

import torch

from qatlab.nn.fused import enabled as fused_enabled
from qatlab.nn.fused import load_error
from qatlab.timing import machine


def add_common(ap: argparse.ArgumentParser, repeats: int) -> None:
    """``--threads``, ``--repeats``, ``--clock`` and ``--json``."""
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    ap.add_argument("--json", default=None, help="also write the rows (and machine) here")


def start(a: argparse.Namespace) -> None:
    """Set the threads, stop (naming why) where the fused kernels are not in use, print the machine."""
    if a.threads:
        torch.set_num_threads(a.threads)
    if not fused_enabled():
        raise SystemExit(f"the fused kernels are not in use here: {load_error() or 'QATLAB_FUSED=0'}")
    print(json.dumps({"machine": machine()}))
