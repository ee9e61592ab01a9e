"""Hutchinson's per-block trace estimates against the exact Hessian trace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.mixed.hessian import block_traces, exact_trace, rademacher, twice_differentiable

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@settings(max_examples=20)
@given(st.integers(1, 40), st.integers(0, 2**16))
def test_diagonal_hessian_is_exact_for_any_draw(n: int, seed: int) -> None:
    # vᵀHv = Σ H_ii v_i² = Tr(H) when H is diagonal and v is Rademacher.
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.rand(n, dtype=torch.float64, generator=g) * 3 - 1

    def f(x: torch.Tensor) -> torch.Tensor:
        return (c * x**2).sum() + (x**3).sum()

    est = block_traces(f(t), [t], 1, torch.Generator().manual_seed(seed))[0]
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
    est = block_traces(loss, [a, b], 400, torch.Generator().manual_seed(2))
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


@settings(max_examples=20)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**16))
def test_block_probes_ignore_cross_blocks(n: int, m: int, seed: int) -> None:
    # Each block's own Hessian is diagonal, the cross block is dense and large: a probe of
    # its own gives each block's trace exactly for any draw, whatever the coupling.
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(m, dtype=torch.float64, generator=g, requires_grad=True)
    ca, cb = torch.randn(n, dtype=torch.float64, generator=g), torch.randn(m, dtype=torch.float64, generator=g)
    k = torch.randn(n, m, dtype=torch.float64, generator=g) * 100

    def f(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (ca * x**2).sum() + (cb * z**2).sum() + x @ k @ z

    est = block_traces(f(a, b), [a, b], 1, torch.Generator().manual_seed(seed + 1))
    assert est[0] == pytest.approx(2 * float(ca.sum()), rel=1e-9, abs=1e-9)
    assert est[1] == pytest.approx(2 * float(cb.sum()), rel=1e-9, abs=1e-9)


def _three_layers() -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    w1, w2, w3 = (torch.randn(o, i, generator=g, dtype=torch.float64) for o, i in ((4, 3), (5, 4), (3, 5)))
    return x, y, w1, w2, w3


def _intermediate(x, y, w1, w2, w3) -> tuple:
    # h is an intermediate (a function of w1), as a layer's input is in a network: its
    # Hessian is that of the loss as a function of h downstream.
    a = w1.clone().requires_grad_(True)
    h = torch.tanh(x @ a.T)
    loss = F.cross_entropy(torch.tanh(h @ w2.T) @ w3.T, y)
    dense = torch.autograd.functional.hessian(lambda t: F.cross_entropy(torch.tanh(t @ w2.T) @ w3.T, y), h.detach())
    return a, h, loss, dense.reshape(h.numel(), h.numel())


@settings(max_examples=10)
@given(st.integers(0, 2**16))
def test_activation_probe_is_the_downstream_hessians_quadratic_form(seed: int) -> None:
    x, y, w1, w2, w3 = _three_layers()
    a, h, loss, dense = _intermediate(x, y, w1, w2, w3)
    est = block_traces(loss, [a, h], 1, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    rademacher(a, g)  # the draws block_traces made: a's probe, then h's
    v = rademacher(h, g).reshape(-1)
    assert est[1] == pytest.approx(float(v @ dense @ v), rel=1e-9, abs=1e-12)


def test_activation_trace_matches_exact_hessian_of_an_intermediate() -> None:
    x, y, w1, w2, w3 = _three_layers()
    a, h, loss, dense = _intermediate(x, y, w1, w2, w3)
    exact = float(dense.diagonal().sum())
    assert abs(exact) > 0.5  # a block worth estimating (-0.65)
    est = block_traces(loss, [a, h], 300, torch.Generator().manual_seed(3))
    # one draw's standard deviation is ~1.2 here: 300 draws give ±0.07; 0.3 is ~4 sigma
    assert abs(est[1] - exact) <= 0.3


def test_bad_sample_counts_are_refused() -> None:
    t = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        block_traces((t**2).sum(), [t], 0, torch.Generator())
