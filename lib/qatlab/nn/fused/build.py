"""Build, cache and load the fused fake-quant kernels (a plain C++ shared library).

The library is compiled on first use with the machine's C++ compiler (``$CXX``, else
``c++``, ``g++``, ``clang++``) for this very CPU (``-march=native``), and kept in
``$QATLAB_CACHE/fused`` (default ``$XDG_CACHE_HOME/qatlab``, else ``~/.cache/qatlab``)
under a name hashed from the source, the flags, the compiler and the CPU model, so a
cache shared by machines of different CPUs never hands one the other's build. A build
takes about a second; later processes only load it.

``QATLAB_FUSED=0`` (or ``false``/``off``/``no``) turns the kernels off. When they cannot
be had (no compiler, a failed build, not Linux/macOS), :func:`library` returns None
once with one warning, and the callers keep to the torch-op path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

from qatlab.atomic import atomic_path, write_text

from .source import SOURCE

ENV_SWITCH = "QATLAB_FUSED"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fPIC", "-shared", "-std=c++17")
ABI = 11
BUILD_TIMEOUT_S = 120

_lock = threading.Lock()
_state: dict[str, object] = {}


class FusedBuildError(RuntimeError):
    """The fused kernels could not be built or loaded (the message says which step failed)."""


def env_enabled() -> bool:
    """Whether ``$QATLAB_FUSED`` leaves the kernels on (unset: on)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def cache_root() -> Path:
    base = os.environ.get("QATLAB_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qatlab")
    return Path(base) / "fused"


def find_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


def _cpu_identity() -> str:
    """The CPU model and feature flags (what ``-march=native`` compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def build_key(compiler: str) -> str:
    st = os.stat(compiler)
    parts = [SOURCE, " ".join(FLAGS), os.path.realpath(compiler), str(st.st_size), str(int(st.st_mtime)), _cpu_identity(), str(ABI)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def library_path(compiler: str) -> Path:
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    return cache_root() / f"qatlab_fused_{build_key(compiler)}{suffix}"


def build(compiler: str, target: Path) -> None:
    """Compile :data:`SOURCE` into ``target`` (replaced atomically: concurrent builders
    each write their own temp file, and the last rename wins with an identical file)."""
    with tempfile.TemporaryDirectory(prefix="qatlab_fused_") as tmp:
        src = Path(tmp) / "fused.cpp"
        write_text(src, SOURCE)
        with atomic_path(target) as out:
            cmd = [compiler, *FLAGS, str(src), "-o", str(out)]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise FusedBuildError(f"{' '.join(cmd)}: {e}") from e
            if r.returncode != 0:
                tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
                raise FusedBuildError(f"{' '.join(cmd)} exited {r.returncode}: {' / '.join(tail)}")


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.qatlab_fused_abi() != ABI:
        raise FusedBuildError(f"{path}: ABI {lib.qatlab_fused_abi()}, expected {ABI}")
    return lib


def load() -> ctypes.CDLL:
    """Build if needed, then load; raises :class:`FusedBuildError` naming what failed."""
    if sys.platform not in ("linux", "darwin"):
        raise FusedBuildError(f"fused kernels are built on Linux and macOS only, not {sys.platform}")
    compiler = find_compiler()
    if compiler is None:
        raise FusedBuildError("no C++ compiler found ($CXX, c++, g++, clang++)")
    path = library_path(compiler)
    if not path.exists():
        build(compiler, path)
    try:
        return _load(path)
    except OSError as e:
        raise FusedBuildError(f"loading {path}: {e}") from e


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (switched off, or unavailable: warned once)."""
    if not env_enabled():
        return None
    lib = _state.get("lib")
    if lib is not None or "error" in _state:
        return lib  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state and "error" not in _state:
            try:
                _state["lib"] = load()
            except FusedBuildError as e:
                _state["error"] = str(e)
                warnings.warn(f"qatlab: fused fake-quant kernels unavailable, using torch ops ({e})", RuntimeWarning, stacklevel=3)
    return _state.get("lib")  # type: ignore[return-value]


def load_error() -> str | None:
    """Why the kernels are not in use, after a :func:`library` call returned None."""
    return _state.get("error")  # type: ignore[return-value]
