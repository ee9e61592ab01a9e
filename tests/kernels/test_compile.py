"""The .cu sources compile with nvcc for sm_80 and sm_90 without register spills, and
the tensor-core kernel's SASS really uses IMMA (not an emulation).

Skips with a reason where nvcc (or, for the SASS check, cuobjdump + nvdisasm) is
absent. cuobjdump is looked up on PATH, in $CUDA_HOME/bin, next to nvcc, in
$QATLAB_CUDA_TOOLS (a folder), and in the ``nvidia-cuda-cuobjdump`` /
``nvidia-cuda-nvdisasm`` wheels' ``nvidia/cu1x/bin`` if those are importable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from qatlab.kernels.cupy_backend import MMA_STAGES, SOURCES, kernel_source

# Each case runs nvcc on the kernel sources (seconds per arch).
pytestmark = pytest.mark.slow

ARCHS = ("sm_80", "sm_90")


def _tool(name: str) -> str | None:
    dirs: list[Path] = []
    if os.environ.get("QATLAB_CUDA_TOOLS"):
        dirs.append(Path(os.environ["QATLAB_CUDA_TOOLS"]))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]) / "bin")
    nvcc = shutil.which("nvcc")
    if nvcc:
        dirs.append(Path(nvcc).resolve().parent)
    try:
        import nvidia  # namespace package of NVIDIA's PyPI wheels

        for root in getattr(nvidia, "__path__", []):
            dirs.extend(sorted(Path(root).glob("cu*/bin")) + sorted(Path(root).glob("*/bin")))
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        return found
    for d in dirs:
        if (d / name).is_file() and os.access(d / name, os.X_OK):
            return str(d / name)
    return None


@dataclass
class Built:
    cubin: Path
    ptxas_log: str


def nvcc_builds(out: Path, sources: dict[str, str], options: list[str] | tuple[str, ...], timeout: int) -> dict[tuple[str, str], Built]:
    """``nvcc -cubin -Xptxas -v`` of every (name -> CUDA text, arch) into ``out``; skips without nvcc."""
    nvcc = _tool("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, $CUDA_HOME/bin): cannot compile the .cu sources")
    res: dict[tuple[str, str], Built] = {}
    for name, text in sources.items():
        src = out / f"{name}.cu"
        src.write_text(text)
        for arch in ARCHS:
            cubin = out / f"{name}_{arch}.cubin"
            cmd = [nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", *options, "-o", str(cubin), str(src)]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"
            res[(name, arch)] = Built(cubin, p.stdout + p.stderr)
    return res


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Built]:
    """Compile every (source, arch) once per test session."""
    # exactly the text CuPy hands to NVRTC (header inlined), same -D options
    return nvcc_builds(
        tmp_path_factory.mktemp("cubins"), {v: kernel_source(v) for v in SOURCES}, ["-std=c++17", f"-DSTAGES={MMA_STAGES}"], timeout=120
    )


def _functions(log: str) -> dict[str, str]:
    """ptxas -v output split per entry function."""
    parts = re.split(r"Compiling entry function '([^']+)'", log)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def assert_no_spills(funcs: dict[str, str], arch: str, max_regs: int) -> None:
    """Every entry function of a ptxas -v log: no spills, no stack frame, <= max_regs registers."""
    for name, text in funcs.items():
        assert "0 bytes spill stores, 0 bytes spill loads" in text, f"{name} ({arch}) spills:\n{text}"
        assert "0 bytes stack frame" in text, f"{name} ({arch}) uses a stack frame:\n{text}"
        regs = int(re.search(r"Used (\d+) registers", text).group(1))
        assert regs <= max_regs, f"{name} ({arch}) uses {regs} registers"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", sorted(SOURCES))
def test_compiles_without_spills(builds: dict, variant: str, arch: str) -> None:
    b = builds[(variant, arch)]
    funcs = _functions(b.ptxas_log)
    assert set(funcs) == {f"int8_gemm_{variant}_s32", f"int8_gemm_{variant}_requant"}, b.ptxas_log
    # __launch_bounds__(256, 2) on the mma kernel caps it at 128 registers
    assert_no_spills(funcs, arch, max_regs=128 if variant == "mma" else 255)


def _sass(cubin: Path) -> str:
    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        pytest.skip(
            "cuobjdump not found (install the nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm wheels "
            "or set QATLAB_CUDA_TOOLS to a folder holding both)"
        )
    env = dict(os.environ)
    nvdisasm = _tool("nvdisasm")
    if nvdisasm is None:
        pytest.skip("nvdisasm not found: cuobjdump -sass needs it (nvidia-cuda-nvdisasm wheel)")
    env["PATH"] = os.pathsep.join([str(Path(nvdisasm).parent), env.get("PATH", "")])
    p = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("arch", ARCHS)
def test_mma_kernel_sass_uses_imma_ldsm_ldgsts(builds: dict, arch: str) -> None:
    sass = _sass(builds[("mma", arch)].cubin)
    # one IMMA per mma.sync: 2 kernels x (BK/32 = 2) x 16 per warp tile
    assert len(re.findall(r"\bIMMA\.16832\.S8\.S8", sass)) >= 64, "no int8 tensor-core IMMA in the SASS"
    assert re.search(r"\bLDSM\.16\.M88\.4\b", sass), "ldmatrix.x4 (LDSM) missing"
    assert re.search(r"\bLDGSTS\b", sass), "cp.async (LDGSTS) missing"
    # the fused epilogue rounds in double precision, as the CPU reference
    assert re.search(r"\bDMUL\b", sass)


@pytest.mark.parametrize("arch", ARCHS)
def test_dp4a_kernel_sass_uses_idp4a(builds: dict, arch: str) -> None:
    sass = _sass(builds[("dp4a", arch)].cubin)
    assert re.search(r"\bIDP\.4A\.S8\.S8\b", sass), "__dp4a did not become IDP.4A"
