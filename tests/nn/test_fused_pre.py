"""A hardswish / hardsigmoid fused into the quantizer's kernels (``pre``) against the
activation run first by torch and the quantizer after it.

Contract: the values, ``dx`` and an observer's range and qparams are bit for bit those
of ``F.hardswish`` / ``F.hardsigmoid`` followed by the same quantizer (the activation's
own arithmetic and its backward kernel's, down to the kinks at ±3 and signed zeros; a
NaN stays a NaN); LSQ's step and zero-point gradients are the same per-element terms, summed within
float32 rounding. ``QuantLUT`` takes the fused route and gives what its unfused
route gives, forward and backward.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.nn import FakeQuant, fused
from qatlab.nn.fake_quant import PRE_FNS
from qatlab.nn.fused import build
from qatlab.nn.fused.ops import ASYMMETRIC, SYMMETRIC_SIGNED, ObservePlan, fake_quant_fused, observe_fake_quant_fused
from qatlab.nn.modules import QuantLUT
from qatlab.quant import QuantSpec

pytestmark = pytest.mark.skipif(
    build.find_compiler() is None or not build.env_enabled(), reason="no C++ compiler here, or QATLAB_FUSED=0: the fallback path runs"
)

PRE = st.sampled_from(sorted(PRE_FNS))
CLAMP = st.sampled_from([None, (-0.25, None), (None, 2.0), (0.0, 1.5)])
# The kinks (±3), zeros of both signs, values just inside and outside the kinks, NaN.
SPECIAL = [-3.0, 3.0, 0.0, -0.0, -2.9999998, 2.9999998, -3.0000002, 3.0000002, 6.0, -6.0]


@pytest.fixture(scope="module", autouse=True)
def kernels_built() -> None:
    if not fused.enabled():
        pytest.fail(f"a C++ compiler exists but the fused kernels did not build: {fused.load_error()}")


def assert_bitwise(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal bit patterns, signed zeros included; a NaN matches any NaN (torch's vectorized
    max/min return NaNs with their own sign bit and payload)."""
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    diff = (a.contiguous().view(torch.int32) != b.contiguous().view(torch.int32)) & ~(a.isnan() & b.isnan())
    assert not bool(diff.any()), f"{int(diff.sum())} values differ, e.g. {a[diff][:4].tolist()} vs {b[diff][:4].tolist()}"


def _inputs(seed: int, shape: tuple[int, ...], nan: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn(shape, generator=g)
    flat = x.view(-1)
    k = min(len(SPECIAL), flat.numel())
    flat[:k] = torch.tensor(SPECIAL[:k])
    if nan and flat.numel() > k:
        flat[k] = math.nan
    return x, torch.randn(shape, generator=g)


def _run(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dy: torch.Tensor, *params: torch.Tensor):  # type: ignore[no-untyped-def]
    xr = x.clone().requires_grad_()
    ps = [p.detach().clone().requires_grad_(p.requires_grad) for p in params]
    y = fn(xr, *ps)
    y.backward(dy)
    return y.detach(), xr.grad, [p.grad for p in ps]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    pre=PRE,
    clamp=CLAMP,
    per_channel=st.booleans(),
    bits=st.integers(2, 8),
    learned=st.booleans(),
    nan=st.booleans(),
)
def test_fake_quant_with_pre_equals_the_activation_then_the_quantizer(seed, pre, clamp, per_channel, bits, learned, nan) -> None:  # type: ignore[no-untyped-def]
    x, dy = _inputs(seed, (3, 4, 5, 7), nan)
    axis = 1 if per_channel else None
    c = 4 if per_channel else 1
    g = torch.Generator().manual_seed(seed + 1)
    s = (0.02 + torch.rand(c, generator=g)).requires_grad_(learned)
    z = torch.randint(0, 2**bits, (c,), generator=g).float().requires_grad_(learned)
    qmin, qmax = 0, 2**bits - 1
    gf = 0.37 if learned else 1.0

    def fused_pre(v, s_, z_):  # type: ignore[no-untyped-def]
        return fake_quant_fused(v, s_, z_, qmin, qmax, axis, gf, None, clamp, pre)

    def torch_first(v, s_, z_):  # type: ignore[no-untyped-def]
        return fake_quant_fused(PRE_FNS[pre](v), s_, z_, qmin, qmax, axis, gf, None, clamp)

    y1, dx1, (ds1, dz1) = _run(fused_pre, x, dy, s, z)
    y2, dx2, (ds2, dz2) = _run(torch_first, x, dy, s, z)
    assert_bitwise(y1, y2)
    assert_bitwise(dx1, dx2)
    if learned and not nan:
        # The same terms; only the float32 partial sums may round differently.
        scale = (dy.abs() * y2.abs()).sum() + 1.0
        assert float((ds1 - ds2).abs().max()) <= 1e-5 * float(scale)
        assert float((dz1 - dz2).abs().max()) <= 1e-5 * float(dy.abs().sum() + 1.0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), pre=PRE, clamp=CLAMP, per_channel=st.booleans(), bits=st.integers(2, 8), symmetric=st.booleans())
def test_observed_quantizer_with_pre_equals_the_activation_then_the_observer(seed, pre, clamp, per_channel, bits, symmetric) -> None:  # type: ignore[no-untyped-def]
    x, dy = _inputs(seed, (2, 6, 3, 3), nan=False)
    axis = 1 if per_channel else None
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    scheme, div = (SYMMETRIC_SIGNED, (qmax - qmin) / 2) if symmetric else (ASYMMETRIC, float(qmax - qmin))
    with_pre = ObservePlan(x.shape, axis, qmin, qmax, div, scheme, clamp=clamp, pre=pre)
    plain = ObservePlan(x.shape, axis, qmin, qmax, div, scheme, clamp=clamp)
    out1: list[torch.Tensor] = []
    out2: list[torch.Tensor] = []

    def observed(plan: ObservePlan, first: Callable[[torch.Tensor], torch.Tensor], out: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        def fn(v):  # type: ignore[no-untyped-def]
            y, *state = observe_fake_quant_fused(first(v), plan)
            out.extend(state)
            return y

        return fn

    y1, dx1, _ = _run(observed(with_pre, lambda v: v, out1), x, dy)
    y2, dx2, _ = _run(observed(plain, PRE_FNS[pre], out2), x, dy)
    assert_bitwise(y1, y2)
    assert_bitwise(dx1, dx2)
    for a, b in zip(out1, out2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ste", ["clipped", "lsq", "pact"])
@pytest.mark.parametrize("pre", sorted(PRE_FNS))
def test_fakequant_pre_equals_the_torch_op_path(ste: str, pre: str) -> None:
    """Calibrating, then training (observers on), then frozen: the quantizer's ``pre``
    gives what the torch-op path (the activation first, no kernels) gives."""
    spec = QuantSpec(bits=4, symmetric=ste == "pact", signed=False if ste == "pact" else None, estimator="minmax")
    fast, slow = FakeQuant(spec, ste, "act"), FakeQuant(spec, ste, "act")
    x, dy = _inputs(5, (8, 3, 6, 6), nan=False)
    for step, (calibrating, observe) in enumerate([(True, True), (False, True), (False, False)]):
        for q in (fast, slow):
            q.calibrating, q.observe = calibrating, observe
        if step == 1:
            fast.init_learned()
            slow.init_learned()
        y1, dx1, _ = _run(lambda v: fast(v, None, None, pre), x + step, dy)
        with fused.fused_disabled():
            y2, dx2, _ = _run(lambda v: slow(v, None, None, pre), x + step, dy)
        assert torch.equal(y1, y2)  # the torch ops may give -0 where the kernels give +0
        assert torch.equal(dx1, dx2)
        assert torch.equal(fast.lo, slow.lo) and torch.equal(fast.hi, slow.hi)
    with pytest.raises(ValueError, match="'relu'"):
        fast(x, None, None, "relu")


@pytest.mark.parametrize("fn", ["hardswish", "hardsigmoid", "silu"])
def test_quantlut_fused_route_equals_its_unfused_route(fn: str) -> None:
    spec = QuantSpec(bits=4, symmetric=False, estimator="minmax")
    fused_lut, plain_lut = QuantLUT(fn, spec), QuantLUT(fn, spec)
    # An instance's own apply_fn (as the twice-differentiable float twin sets) takes the
    # unfused route: the activation, then the quantizer.
    plain_lut.apply_fn = lambda v: QuantLUT.apply_fn(plain_lut, v)  # type: ignore[method-assign]
    x, dy = _inputs(9, (4, 5, 6, 6), nan=False)
    for train in (True, False):
        fused_lut.train(train)
        plain_lut.train(train)
        y1, dx1, _ = _run(fused_lut, x, dy)
        y2, dx2, _ = _run(plain_lut, x, dy)
        assert_bitwise(y1, y2)
        assert_bitwise(dx1, dx2)
    calls: list[str] = []
    real = fused_lut.act_fq.forward
    fused_lut.act_fq.forward = lambda *a, **k: (calls.append(str(a[3] if len(a) > 3 else k.get("pre"))), real(*a, **k))[1]  # type: ignore[method-assign]
    fused_lut(x)
    assert calls == [fn if fn in PRE_FNS else "None"]
