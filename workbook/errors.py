"""The one error path of every command: a typed exception, one line, a documented exit code.

Exit codes: 2 — usage or input the user can fix; 1 — the run itself failed (a trial, a
notebook, the disk); 130 — interrupted. Anything else that escapes a command is reported
the same way (one line, exit 1); ``--debug`` brings the traceback back.
"""

from __future__ import annotations

EXIT_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A user-facing failure: ``<what> (<where>): <how to fix>``, no traceback.

    ``where`` names the file, line or option at fault; ``fix`` says what to do about it.
    ``code`` is the exit status (2 for input, 1 for a failed run).
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None, code: int = EXIT_INPUT) -> None:
        self.what, self.where, self.fix, self.code = what, where, fix, code
        super().__init__(what)

    def __str__(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.fix:
            text += f": {self.fix}"
        return text


def one_line(e: BaseException) -> str:
    """An exception's first line (its type name when it has no text), for a CommandError."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
