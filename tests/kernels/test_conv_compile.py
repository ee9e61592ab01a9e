"""The convolution .cu sources compile with nvcc and with NVRTC (what CuPy uses) for
sm_80 and sm_90, without register spills, and the SASS of the implicit-GEMM kernel
really uses the int8 tensor cores (IMMA), ldmatrix and cp.async.

Tool lookup (nvcc, cuobjdump, nvdisasm, libnvrtc) and the skips are those of
test_compile.py and test_nvrtc.py, imported rather than repeated.
"""

from __future__ import annotations

import re

import pytest

from qatlab.kernels.cupy_backend import KERNEL_DIR
from qatlab.kernels.cupy_conv import CONV_SOURCES, conv_compile_options, conv_kernel_source
from tests.kernels.test_compile import ARCHS, Built, _functions, _sass, assert_no_spills, nvcc_builds
from tests.kernels.test_nvrtc import _compile, _find_nvrtc

# Each case runs nvcc on the kernel sources (seconds per arch).
pytestmark = pytest.mark.slow

VECS = {"igemm": (16, 4, 1), "direct": (16, 1)}


def _entry_names(kind: str) -> set[str]:
    if kind == "igemm":
        return {f"int8_conv2d_igemm_{v}_v{vec}" for v in ("s32", "requant") for vec in VECS[kind]}
    return {f"int8_conv2d_direct_{v}_v{vec}" for v in ("s32", "requant") for vec in VECS[kind]}


@pytest.fixture(scope="module")
def conv_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Built]:
    """Compile every (source, arch) once per module: the text and options CuPy uses."""
    return nvcc_builds(
        tmp_path_factory.mktemp("conv_cubins"), {k: conv_kernel_source(k) for k in CONV_SOURCES}, conv_compile_options(), timeout=180
    )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", sorted(CONV_SOURCES))
def test_conv_compiles_without_spills(conv_builds: dict, kind: str, arch: str) -> None:
    b = conv_builds[(kind, arch)]
    funcs = _functions(b.ptxas_log)
    assert set(funcs) == _entry_names(kind), b.ptxas_log
    # __launch_bounds__(256, 2) caps the implicit GEMM at 128 (two CTAs per SM);
    # the direct kernel's (256) at 255
    assert_no_spills(funcs, arch, max_regs=128 if kind == "igemm" else 255)


@pytest.mark.parametrize("arch", ARCHS)
def test_igemm_sass_uses_imma_ldsm_ldgsts(conv_builds: dict, arch: str) -> None:
    sass = _sass(conv_builds[("igemm", arch)].cubin)
    per_kernel = re.split(r"Function : ", sass)[1:]
    assert len(per_kernel) == len(_entry_names("igemm"))
    for text in per_kernel:
        name = text.split()[0]
        # (BK/32 = 2) x 16 mma per warp tile and K tile
        assert len(re.findall(r"\bIMMA\.16832\.S8\.S8", text)) >= 32, f"{name}: no int8 tensor-core IMMA"
        assert re.search(r"\bLDSM\.16\.M88\.4\b", text), f"{name}: ldmatrix.x4 (LDSM) missing"
        assert re.search(r"\bLDGSTS\b", text), f"{name}: cp.async (LDGSTS) missing (B is always cp.async)"
        if name.endswith("_v16"):
            assert re.search(r"\bLDGSTS\.E\.BYPASS\.128\b", text), f"{name}: 16-byte cp.async.cg missing"
        if "requant" in name:
            assert re.search(r"\bDMUL\b", text), f"{name}: the epilogue must round in double precision"


@pytest.mark.parametrize("arch", ARCHS)
def test_direct_sass_uses_idp4a(conv_builds: dict, arch: str) -> None:
    sass = _sass(conv_builds[("direct", arch)].cubin)
    assert len(re.findall(r"\bIDP\.4A\.S8\.S8\b", sass)) >= 4 * len(_entry_names("direct"))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", sorted(CONV_SOURCES))
def test_conv_sources_compile_under_nvrtc(kind: str, arch: str) -> None:
    path = _find_nvrtc()
    if path is None:
        pytest.skip("libnvrtc not found (set QATLAB_NVRTC or install the nvidia-cuda-nvrtc wheel)")
    import ctypes

    rc, log, cubin = _compile(ctypes.CDLL(path), conv_kernel_source(kind), [*conv_compile_options(), f"-arch={arch}"])
    assert rc == 0, f"NVRTC ({path}) failed for {kind} {arch}:\n{log}"
    assert cubin > 0


def test_sources_are_self_contained() -> None:
    # CuPy compiles the text with headers inlined; no include may be left to resolve
    for kind, fname in CONV_SOURCES.items():
        assert (KERNEL_DIR / fname).is_file()
        assert "#include" not in conv_kernel_source(kind)
