"""Atomic file writes: a reader sees the old file or the whole new one, never half.

Every writer in qatlab and workbook goes through here. The data goes to a unique temp
name in the target's folder (same filesystem, so the rename is atomic), is flushed and
fsynced, then renamed over the target. On any error, KeyboardInterrupt included, the
temp file is removed and the target is left as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# mkstemp creates 0600; a result file should get the usual umask-derived mode.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


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
        os.chmod(tmp, FILE_MODE)
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
