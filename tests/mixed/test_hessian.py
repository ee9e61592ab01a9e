"""Hutchinson's trace estimate against the exact Hessian trace."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.mixed.hessian import exact_trace, hutchinson_trace, twice_differentiable


@settings(max_examples=20)
@given(st.integers(1, 40), st.integers(0, 2**16))
def test_diagonal_hessian_is_exact_for_any_draw(n: int, seed: int) -> None:
    # vᵀHv = Σ H_ii v_i² = Tr(H) when H is diagonal and v is Rademacher.
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.rand(n, dtype=torch.float64, generator=g) * 3 - 1

    def f(x: torch.Tensor) -> torch.Tensor:
        return (c * x**2).sum() + (x**3).sum()

    est = hutchinson_trace(f(t), [t], 1, torch.Generator().manual_seed(seed))[0]
    assert abs(est - exact_trace(f, t.detach())) <= 1e-9 * max(1.0, abs(est))


def test_tiny_network_trace_matches_autograd_hessian() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=g)
    w1 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    w2 = torch.randn(2, 4, generator=g, dtype=torch.float64)

    def loss_w1(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(torch.tanh(x @ w.T) @ w2.T, y)

    def loss_w2(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(torch.tanh(x @ w1.T) @ w.T, y)

    a = w1.clone().requires_grad_(True)
    b = w2.clone().requires_grad_(True)
    loss = F.cross_entropy(torch.tanh(x @ a.T) @ b.T, y)
    est = hutchinson_trace(loss, [a, b], 400, torch.Generator().manual_seed(2))
    for e, exact in zip(est, (exact_trace(loss_w1, w1), exact_trace(loss_w2, w2))):
        assert abs(e - exact) <= 0.15 * abs(exact)  # ~2 standard errors at 400 draws


def test_twice_differentiable_keeps_the_function() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Hardswish(), torch.nn.Linear(3, 3), torch.nn.Hardsigmoid())
    x = torch.randn(8, 3) * 4
    m2 = twice_differentiable(m)
    assert torch.allclose(m(x), m2(x), atol=1e-6)
    # the double backward the fused kernels lack
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m2(xr).sum(), xr, create_graph=True)
    torch.autograd.grad(g.sum(), xr)
