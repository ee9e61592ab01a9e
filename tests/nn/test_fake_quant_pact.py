"""FakeQuant's PACT fast path against the reference ``pact_fake_quant``: same values, same
gradients for x and for the learned clip α, on random inputs and clips (including the
degenerate ones: α at or below zero, α far below the data, values exactly at α)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.nn import FakeQuant
from qatlab.nn.fake_quant import pact_fake_quant_fast
from qatlab.nn.ste import pact_fake_quant
from qatlab.quant import QuantSpec


def _both(x: torch.Tensor, alpha: float, bits: int, g: torch.Tensor):
    out = []
    for fn in (pact_fake_quant, pact_fake_quant_fast):
        xi = x.clone().requires_grad_()
        a = torch.nn.Parameter(torch.tensor([alpha]))
        y = fn(xi, a, bits)
        y.backward(g)
        out.append((y.detach(), xi.grad, a.grad))
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**20),
    bits=st.sampled_from([2, 3, 4, 8]),
    alpha=st.one_of(st.floats(1e-3, 8.0), st.sampled_from([0.0, -0.5, 1e-14, 2.0])),
    spread=st.floats(0.1, 10.0),
)
def test_fast_path_equals_the_reference(seed: int, bits: int, alpha: float, spread: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 5, 6, generator=gen) * spread
    x.view(-1)[:4] = torch.tensor([alpha, 0.0, -alpha, alpha * 0.999])  # ties at the clip edges
    g = torch.randn(x.shape, generator=gen)
    (y_r, dx_r, da_r), (y_f, dx_f, da_f) = _both(x, alpha, bits, g)
    # The reference returns y + (yq - y), one float rounding away from yq itself.
    torch.testing.assert_close(y_f, y_r, rtol=0, atol=4 * torch.finfo(torch.float32).eps * max(1.0, abs(alpha)))
    assert torch.equal(dx_f, dx_r)
    torch.testing.assert_close(da_f, da_r, rtol=1e-5, atol=1e-5)


def test_fast_path_outputs_lie_on_the_grid() -> None:
    x = torch.linspace(-2, 5, 1001)
    y = pact_fake_quant_fast(x, torch.tensor([3.0]), 4)
    codes = y / (3.0 / 15)
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
    assert float(y.min()) == 0.0 and float(y.max()) == 3.0


def test_fakequant_module_uses_it_with_the_same_result() -> None:
    torch.manual_seed(0)
    fq = FakeQuant(QuantSpec(bits=4, symmetric=True, signed=False), "pact", "act")
    x = torch.rand(8, 16) * 4
    fq(x)  # initialises α from the observed range
    xi = x.clone().requires_grad_()
    y = fq(xi)
    y.sum().backward()
    xr = x.clone().requires_grad_()
    a = fq.alpha.detach().clone().requires_grad_()
    yr = pact_fake_quant(xr, a, 4)
    yr.sum().backward()
    torch.testing.assert_close(y, yr, rtol=0, atol=1e-6)
    assert torch.equal(xi.grad, xr.grad)
    torch.testing.assert_close(fq.alpha.grad, a.grad)
