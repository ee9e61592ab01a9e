"""Shared fixtures, hypothesis strategies and the gpu/slow markers' behaviour.

Markers are declared once, in pyproject.toml. ``gpu`` tests skip cleanly where no
CUDA device (or no CuPy) is present; ``slow`` tests run unless ``-m 'not slow'``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# Locally hypothesis keeps exploring (new examples each run, failures remembered in
# .hypothesis/). CI must give the same verdict on the same commit, so there every
# test draws a fixed sequence of examples and no example database is read or written.
settings.register_profile("default", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", settings.get_profile("default"), derandomize=True, database=None, print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=1000)
_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if _CI else "default"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def gpu_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and CuPy; none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ---- hypothesis strategies ----------------------------------------------------------

bits_st = st.integers(min_value=2, max_value=16)
low_bits_st = st.integers(min_value=2, max_value=8)


@st.composite
def float_tensors(draw, min_dims: int = 1, max_dims: int = 4, max_side: int = 9, magnitude: float = 1e3) -> torch.Tensor:
    """Finite float32 tensors of random shape, with values spanning many magnitudes."""
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side))
    scale = draw(st.sampled_from([1e-3, 1.0, magnitude]))
    elems = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32)
    arr = draw(hnp.arrays(np.float32, shape, elements=elems))
    return torch.from_numpy(arr * np.float32(scale))


@st.composite
def int32_arrays(draw, max_len: int = 64) -> np.ndarray:
    n = draw(st.integers(1, max_len))
    edge = st.sampled_from([-(2**31), 2**31 - 1, 0, 1, -1])
    return np.array(draw(st.lists(st.one_of(st.integers(-(2**31), 2**31 - 1), edge), min_size=n, max_size=n)), dtype=np.int64)
