"""The one exception type a command raises for the user (not for a traceback)."""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


def one_line(e: BaseException) -> str:
    """An exception's first line (its type name when it has no text), for a CommandError."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
