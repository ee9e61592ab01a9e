"""The sources compile under NVRTC — the compiler CuPy's RawModule actually uses — with
the launcher's options, for sm_80 and sm_90, with no GPU (NVRTC needs no device).

libnvrtc is looked up via $QATLAB_NVRTC (path to libnvrtc.so*), $CUDA_HOME/lib64, the
``nvidia-cuda-nvrtc`` wheel (``nvidia/cu1x/lib``) and the loader path; skipped if absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import pytest

from qatlab.kernels.cupy_backend import MMA_STAGES, SOURCES, kernel_source


def _find_nvrtc() -> str | None:
    cands: list[Path] = []
    if os.environ.get("QATLAB_NVRTC"):
        cands.append(Path(os.environ["QATLAB_NVRTC"]))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.extend(sorted((Path(os.environ[var]) / "lib64").glob("libnvrtc.so*")))
    try:
        import nvidia

        for root in getattr(nvidia, "__path__", []):
            cands.extend(sorted(Path(root).glob("cu*/lib/libnvrtc.so*")) + sorted(Path(root).glob("*/lib/libnvrtc.so*")))
    except ImportError:
        pass
    for c in cands:
        if c.is_file() and "builtins" not in c.name:
            return str(c)
    return ctypes.util.find_library("nvrtc")


def _compile(lib: ctypes.CDLL, src: str, opts: list[str]) -> tuple[int, str, int]:
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"kernel.cu", 0, None, None)
    assert rc == 0, f"nvrtcCreateProgram failed ({rc})"
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    cubin = ctypes.c_size_t(0)
    if rc == 0:
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(cubin))
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, buf.value.decode(errors="replace"), cubin.value


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("variant", sorted(SOURCES))
def test_sources_compile_under_nvrtc(variant: str, arch: str) -> None:
    path = _find_nvrtc()
    if path is None:
        pytest.skip("libnvrtc not found (set QATLAB_NVRTC or install the nvidia-cuda-nvrtc wheel)")
    lib = ctypes.CDLL(path)
    # the options cupy_backend._module passes, plus the arch CuPy adds for the device
    rc, log, cubin = _compile(lib, kernel_source(variant), ["-std=c++17", f"-DSTAGES={MMA_STAGES}", f"-arch={arch}"])
    assert rc == 0, f"NVRTC ({path}) failed for {variant} {arch}:\n{log}"
    assert cubin > 0
