"""The one exception every dataset source raises."""

from __future__ import annotations


class DatasetError(RuntimeError):
    """A dataset that is missing, corrupt, foreign, malformed or could not be downloaded;
    the message names the file (or import path) and what is wrong with it."""
