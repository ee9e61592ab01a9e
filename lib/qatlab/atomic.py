"""Atomic file writes: a reader sees the old file or the whole new one, never half.

Every writer in qatlab and workbook goes through here. The data goes to a unique temp
name in the target's folder (same filesystem, so the rename is atomic), is flushed and
fsynced, then renamed over the target. On any error, KeyboardInterrupt included, the
temp file is removed and the target is left as it was.

The file ends with the permissions a plain ``open(path, "w")`` would give it: the mode
of the file it replaces, or ``0o666`` less the process umask for a new one (the temp
file itself is created ``0o600`` by :func:`tempfile.mkstemp`).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux reports it in ``/proc/self/status``; elsewhere the only way is to set it and
    set it back, which another thread could observe, so that is done under a lock.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file now: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def target_mode(path: str | os.PathLike[str]) -> int:
    """The mode the file written to ``path`` should end with: the replaced file's, else a new file's."""
    try:
        st = os.stat(path)
    except OSError:
        return new_file_mode()
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else new_file_mode()


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; whatever is written there replaces ``path`` on success.

    For writers that want a file name (``torch.save``, papermill, onnx): write the temp
    path inside the ``with`` block. Nothing is renamed if the block raises.
    """
    p = Path(path)
    if mkdir:
        p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, target_mode(p))
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, mkdir: bool = True) -> None:
    with atomic_path(path, mkdir=mkdir) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str, *, mkdir: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), mkdir=mkdir)


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1, mkdir: bool = True, **kw: Any) -> None:
    write_text(path, json.dumps(obj, indent=indent, **kw) + "\n", mkdir=mkdir)
