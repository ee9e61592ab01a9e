"""Argparse value types shared by the commands (one validator, not a copy per command)."""

from __future__ import annotations

import argparse
from typing import Callable


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= ``lo``, naming the bad value."""
    what = "a positive integer" if lo == 1 else "a non-negative integer" if lo == 0 else f"an integer >= {lo}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse
