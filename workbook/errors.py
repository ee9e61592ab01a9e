"""The one exception type a command raises for the user (not for a traceback)."""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""
