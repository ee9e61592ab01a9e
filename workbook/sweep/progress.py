"""What the sweep prints while it runs: a progress bar (or nothing) and one line per trial."""

from __future__ import annotations

from typing import Any, Mapping, TextIO


class Progress:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.bar: Any = None

    def echo(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def start(self, total: int, enabled: bool) -> None:
        if not enabled or total == 0 or not self.tty:  # a bar only on a terminal; logs get the per-trial lines
            return
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="trial", file=self.stream, dynamic_ncols=True, mininterval=0.5, smoothing=0.1, desc="trials")

    def status(self, ok: int, failed: int, counts: Mapping[str, int]) -> None:
        if self.bar is None:
            return
        text = f"ok={ok} failed={failed} running={counts['running']} queued={counts['queued']}"
        if counts.get("pretraining"):
            text += f" pretraining={counts['pretraining']}"
        self.bar.set_postfix_str(text, refresh=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
