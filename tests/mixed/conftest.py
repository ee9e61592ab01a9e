from __future__ import annotations

import pytest
import torch

from qatlab.intmodel import convert
from qatlab.mixed import DecisionSpace, SensitivityData, decision_space
from qatlab.models import build_model
from qatlab.nn import calibrate, prepare_qat
from qatlab.quant import QuantSpec

W = QuantSpec(bits=8, symmetric=True, granularity="channel", axis=0)
A = QuantSpec(bits=8, symmetric=False)


def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet").eval()


def calib_batches(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(16, 1, 28, 28, generator=g) for _ in range(n)]


def converted(model: torch.nn.Module, layer_bits: dict | None = None):
    q = prepare_qat(model, W, A, "lsq", layer_bits=layer_bits)
    calibrate(q, calib_batches())
    return q, convert(q.eval(), (1, 28, 28))


@pytest.fixture(scope="module")
def lenet_setup() -> tuple[torch.nn.Module, torch.nn.Module, DecisionSpace, object]:
    m = lenet()
    q, im = converted(m)
    return m, q, decision_space(q, (2, 4, 8)), im


def data() -> SensitivityData:
    g = torch.Generator().manual_seed(2)
    calib = [(torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(2)]
    return SensitivityData(calib, (torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)))


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: Hessian-vector products and other work on tiny
    tensors only pay a second thread's hand-off cost (20x slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
