"""BatchNorm on batch statistics fused with the quantizer after it (``batch_norm_fake_quant_fused``).

The reference is written out with torch ops: the batch statistics in float64, the BN
output ``z = (x − K)·a + b`` in float32 from the kernel's ``K``, ``a`` and ``b`` (the
kernel's contract: each step rounded apart), then the quantizer's torch-op path.
Given ``a`` and ``b``, the output and an observer's range and qparams are equal bit for
bit; the statistics agree with float64's to float32 rounding, the running statistics
with torch's ``batch_norm`` and the gradients with autograd through the BN formula.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.nn import FakeQuant, calibrate, freeze_bn, fused, prepare_qat, set_observe
from qatlab.nn.fake_quant import SCALE_FLOOR
from qatlab.nn.fused.ops import (
    AFFINE,
    EMA,
    PACT,
    REPLACE,
    RUNNING_MINMAX,
    BNQuantPlan,
    ObservePlan,
    batch_norm_fake_quant_fused,
    bn_fusable,
    bn_momentum,
)
from qatlab.nn.ste import fake_quant, lsq_fake_quant, lsq_grad_factor, pact_fake_quant
from qatlab.quant import QuantSpec, qparams_from_range
from qatlab.quant.granularity import Layout
from qatlab.quant.qparams import scale_divisor
from tests.nn.conftest import NEEDS_KERNELS, assert_bitwise, observe_reference

pytestmark = NEEDS_KERNELS


def _inputs(gen: torch.Generator, shape: tuple[int, ...], shift: float, log2_std: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = shape[1]
    x = (torch.randn(shape, generator=gen) * 2.0**log2_std + shift).float()
    gamma = torch.randn(c, generator=gen)  # signs of both kinds: a < 0 swaps a channel's range
    beta = torch.randn(c, generator=gen)
    return x, gamma, beta


def _stats64(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = x.double()
    var, mean = torch.var_mean(d, dim=(0, 2, 3), unbiased=False)
    return mean, var, 1.0 / torch.sqrt(var + eps)


def _z(x: torch.Tensor, out) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The BN output by the kernel's contract: float32 difference, product, then sum."""
    per = lambda t: t.reshape(1, -1, 1, 1)
    return (x - per(out.shift)) * per(out.a) + per(out.b)


def _clip(v: torch.Tensor, clamp: tuple[float | None, float | None] | None) -> torch.Tensor:
    return v if clamp is None else v.clamp(*clamp)


CLAMPS = st.sampled_from([None, (0.0, None), (0.0, 6.0), (-1.0, 1.0)])
SHAPES = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)).filter(lambda s: s[0] * s[2] * s[3] > 1)


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=SHAPES,
    shift=st.sampled_from([0.0, 3.0, -200.0, 1e4]),
    log2_std=st.integers(-6, 6),
    per_channel=st.booleans(),
    scheme=st.sampled_from(["asym", "sym_signed", "sym_unsigned"]),
    mode=st.sampled_from([REPLACE, RUNNING_MINMAX, EMA]),
    with_frac=st.booleans(),
    clamp=CLAMPS,
    bits=st.sampled_from([2, 4, 8]),
)
def test_observed_quantizer_after_batch_norm_matches_the_reference(  # type: ignore[no-untyped-def]
    seed, shape, shift, log2_std, per_channel, scheme, mode, with_frac, clamp, bits
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, gamma, beta = _inputs(gen, shape, shift, log2_std)
    c, eps, momentum = shape[1], 1e-5, 0.1
    symmetric = scheme != "asym"
    spec = QuantSpec(bits=bits, symmetric=symmetric, signed=scheme == "sym_signed" if symmetric else False, ema_decay=0.9)
    rows = c if per_channel else 1
    scheme_code = {"asym": 0, "sym_signed": 1, "sym_unsigned": 2}[scheme]
    oplan = ObservePlan((shape[0], c, shape[2] * shape[3]) if per_channel else shape, 1 if per_channel else None,
                        spec.qmin, spec.qmax, scale_divisor(spec), scheme_code, spec.ema_decay, clamp)  # fmt: skip
    plan = BNQuantPlan(shape, AFFINE, per_channel, spec.qmin, spec.qmax, clamp=clamp, observe=oplan)
    old_lo = -torch.rand(rows, generator=gen) * 3
    old_hi = torch.rand(rows, generator=gen) * 3
    frac = torch.stack([-torch.rand(rows, generator=gen), torch.rand(rows, generator=gen)]) if with_frac else None
    rm, rv = torch.randn(c, generator=gen), torch.rand(c, generator=gen) + 0.5
    rm_ref, rv_ref = rm.clone(), rv.clone()
    out = batch_norm_fake_quant_fused(x, gamma, beta, rm, rv, momentum, eps, plan, x, None, (mode, old_lo, old_hi, frac))
    assert out is not None

    # Statistics: float64's, to float32 rounding (the kernel sums shifted values).
    mean64, var64, inv64 = _stats64(x, eps)
    scale = abs(shift) + 2.0**log2_std
    torch.testing.assert_close(out.mean.double(), mean64, rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(out.invstd.double(), inv64, rtol=2e-4 if abs(shift) > 2.0 ** (log2_std + 8) else 1e-5, atol=0)
    # Running statistics: as torch's batch_norm moves them.
    F.batch_norm(x, rm_ref, rv_ref, gamma, beta, True, momentum, eps)
    torch.testing.assert_close(rm, rm_ref, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(rv, rv_ref, rtol=2e-4, atol=1e-6)

    # Given K, a and b: the observer, the qparams and the output, bit for bit.
    v = _clip(_z(x, out), clamp)
    lo, hi = observe_reference(v, 1 if per_channel else None, mode, old_lo, old_hi, frac, spec.ema_decay, None)
    assert torch.equal(out.lo, lo) and torch.equal(out.hi, hi)
    layout = Layout("channel", axis=1) if per_channel else Layout("tensor")
    qp = qparams_from_range(lo, hi, spec, layout)
    assert torch.equal(out.scale, qp.scale) and torch.equal(out.zero_point, qp.zero_point)
    assert_bitwise(out.y, fake_quant(v, qp.scale, qp.zero_point, spec.qmin, spec.qmax, 1 if per_channel else None), zero_sign=False)


def _pact_or_lsq(kind: str, gen: torch.Generator, c: int, per_channel: bool, bits: int):  # type: ignore[no-untyped-def]
    if kind == "pact":
        alpha = (torch.rand(1, generator=gen) * 4 + 0.05).requires_grad_()
        return alpha, None
    rows = c if per_channel else 1
    s = (torch.rand(rows, generator=gen) * 0.5 + 0.01) * torch.where(torch.rand(rows, generator=gen) < 0.2, -1.0, 1.0)
    z = torch.randint(0, 2**bits, (rows,), generator=gen).float() + torch.rand(rows, generator=gen) - 0.5
    return s.requires_grad_(), z.requires_grad_()


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=SHAPES,
    shift=st.sampled_from([0.0, 3.0, -50.0]),
    log2_std=st.integers(-3, 4),
    kind=st.sampled_from(["pact", "lsq"]),
    per_channel=st.booleans(),
    clamp=CLAMPS,
    bits=st.sampled_from([2, 4, 8]),
    affine=st.booleans(),
)
def test_learned_quantizers_after_batch_norm_match_the_reference_with_gradients(  # type: ignore[no-untyped-def]
    seed, shape, shift, log2_std, kind, per_channel, clamp, bits, affine
) -> None:
    """Output bit for bit given a and b; gradients of x, γ, β and the quantizer's learned
    parameters as autograd takes them through z = γ·(x − mean)/sqrt(var + eps) + β (batch
    statistics, float64) and the quantizer's torch-op path at the kernel's z."""
    gen = torch.Generator().manual_seed(seed)
    x, gamma, beta = _inputs(gen, shape, shift, log2_std)
    c, eps = shape[1], 1e-5
    per_channel = per_channel and kind == "lsq"
    q1, q2 = _pact_or_lsq(kind, gen, c, per_channel, bits)
    if kind == "pact":
        plan = BNQuantPlan(shape, PACT, False, 0, 2**bits - 1, clamp=clamp)
    else:
        g = lsq_grad_factor(x.numel() // q1.numel(), 2**bits - 1)
        plan = BNQuantPlan(shape, AFFINE, per_channel, 0, 2**bits - 1, True, SCALE_FLOOR, clamp, g)
    gamma_p = gamma.clone().requires_grad_() if affine else None
    beta_p = beta.clone().requires_grad_() if affine else None
    xk = x.clone().requires_grad_()
    out = batch_norm_fake_quant_fused(xk, gamma_p, beta_p, None, None, 0.1, eps, plan, q1, q2)
    assert out is not None
    dy = torch.randn(shape, generator=gen)
    out.y.backward(dy)

    # Reference: values at the kernel's z, gradients through the float64 BN formula.
    xr = x.double().requires_grad_()
    gr = (gamma.double() if affine else torch.ones(c, dtype=torch.float64)).requires_grad_()
    br = (beta.double() if affine else torch.zeros(c, dtype=torch.float64)).requires_grad_()
    var, mean = torch.var_mean(xr, dim=(0, 2, 3), unbiased=False)
    z64 = (xr - mean.reshape(1, -1, 1, 1)) / torch.sqrt(var + eps).reshape(1, -1, 1, 1) * gr.reshape(1, -1, 1, 1) + br.reshape(1, -1, 1, 1)
    zk = _z(x, out)
    z = (zk.double() + (z64 - z64.detach())).float()  # the kernel's values, the formula's gradient
    q1r = q1.detach().clone().requires_grad_()
    q2r = None if q2 is None else q2.detach().clone().requires_grad_()
    v = _clip(z, clamp)
    if kind == "pact":
        yr = pact_fake_quant(v, q1r, bits)
    else:
        axis = 1 if per_channel else None
        g = lsq_grad_factor(x.numel() // q1.numel(), 2**bits - 1)
        yr = lsq_fake_quant(v, q1r.abs().clamp(min=SCALE_FLOOR), q2r, 0, 2**bits - 1, axis, g)
    assert_bitwise(out.y, yr.detach(), zero_sign=False)
    yr.backward(dy)

    def close(got: torch.Tensor | None, want: torch.Tensor | None, name: str) -> None:
        assert got is not None and want is not None, name
        tol = 1e-4 * (1.0 + float(want.abs().max()))
        torch.testing.assert_close(got.double(), want.double().reshape(got.shape), rtol=1e-3, atol=tol, msg=name)

    close(xk.grad, xr.grad, "dx")
    if affine:
        close(gamma_p.grad, gr.grad, "dgamma")
        close(beta_p.grad, br.grad, "dbeta")
    close(q1.grad, q1r.grad, "dalpha" if kind == "pact" else "dscale")
    if q2 is not None:
        close(q2.grad, q2r.grad, "dzero_point")


def test_a_non_finite_statistic_or_range_changes_nothing_and_returns_none() -> None:
    shape = (4, 3, 2, 2)
    x = torch.randn(shape)
    x[1, 2, 0, 1] = float("nan")
    rm, rv = torch.zeros(3), torch.ones(3)
    plan = BNQuantPlan(shape, PACT, False, 0, 15)
    assert batch_norm_fake_quant_fused(x, None, None, rm, rv, 0.1, 1e-5, plan, torch.ones(1)) is None
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))
    # Finite statistics, an infinite observed state: no qparams, nothing moved.
    spec = QuantSpec(bits=4, symmetric=False)
    op = ObservePlan(shape, None, spec.qmin, spec.qmax, scale_divisor(spec), 0, 0.9)
    plan = BNQuantPlan(shape, AFFINE, False, spec.qmin, spec.qmax, observe=op)
    x = torch.randn(shape)
    out = batch_norm_fake_quant_fused(
        x, None, None, rm, rv, 0.1, 1e-5, plan, x, None, (RUNNING_MINMAX, torch.tensor([-math.inf]), torch.ones(1), None)
    )
    assert out is None and torch.equal(rm, torch.zeros(3))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="more than one value per channel"):
        BNQuantPlan((1, 3, 1, 1), PACT, False, 0, 15)
    with pytest.raises(ValueError, match="kind must be"):
        BNQuantPlan((2, 3, 2, 2), 7, False, 0, 15)
    plan = BNQuantPlan((2, 3, 2, 2), PACT, False, 0, 15)
    with pytest.raises(ValueError, match="does not fit the plan"):
        batch_norm_fake_quant_fused(torch.randn(2, 4, 2, 2), None, None, None, None, 0.1, 1e-5, plan, torch.ones(1))
    with pytest.raises(ValueError, match="weight: expected a contiguous float32"):
        batch_norm_fake_quant_fused(torch.randn(2, 3, 2, 2), torch.ones(4), None, None, None, 0.1, 1e-5, plan, torch.ones(1))
    with pytest.raises(ValueError, match="alpha: expected a contiguous float32 CPU tensor of 1 values"):
        batch_norm_fake_quant_fused(torch.randn(2, 3, 2, 2), None, None, None, None, 0.1, 1e-5, plan, torch.ones(3))
    lsq = BNQuantPlan((2, 3, 2, 2), AFFINE, True, 0, 15, True)
    with pytest.raises(ValueError, match="zero_point: expected a contiguous float32 CPU tensor of 3 values"):
        batch_norm_fake_quant_fused(torch.randn(2, 3, 2, 2), None, None, None, None, 0.1, 1e-5, lsq, torch.ones(3), torch.ones(1))
    with pytest.raises(ValueError, match="needs its zero point"):
        batch_norm_fake_quant_fused(torch.randn(2, 3, 2, 2), None, None, None, None, 0.1, 1e-5, lsq, torch.ones(3))
    with pytest.raises(TypeError, match="float32 CPU"):
        batch_norm_fake_quant_fused(torch.randn(2, 3, 2, 2).double(), None, None, None, None, 0.1, 1e-5, plan, torch.ones(1))


def test_momentum_none_is_a_cumulative_average_and_hooks_keep_the_modules_apart() -> None:
    bn = torch.nn.BatchNorm2d(3, momentum=None).train()
    x = torch.randn(4, 3, 2, 2)
    assert bn_fusable(x, bn)
    bn.num_batches_tracked.fill_(3)
    assert bn_momentum(bn) == (0.25, bn.num_batches_tracked)
    h = bn.register_forward_hook(lambda *a: None)
    assert not bn_fusable(x, bn)
    h.remove()
    assert not bn_fusable(x, bn.eval())
    assert not bn_fusable(x.double(), bn.train())


class _Block(torch.nn.Module):
    """conv → BN → ReLU6 (PACT or a clamp), conv → BN (observed: no ReLU), residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 3, 1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3 * 36, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.b1(self.c1(x)))
        return self.fc((self.b2(self.c2(h)) + x).flatten(1))


@pytest.mark.parametrize(
    "ste, estimator, granularity, observing",
    [("clipped", "ema", "tensor", True), ("clipped", "minmax", "tensor", True), ("clipped", "mse", "tensor", True),
     ("clipped", "ema", "channel", True), ("clipped", "ema", "tensor", False), ("lsq", "ema", "tensor", True),
     ("lsq", "ema", "channel", True), ("pact", "mse", "tensor", True)],
)  # fmt: skip
def test_live_bn_layers_give_the_same_codes_state_and_gradients_fused_and_apart(
    ste: str, estimator: str, granularity: str, observing: bool
) -> None:
    """Four training steps with live BN statistics. Before each, a copy of the model runs
    the step with BN and the quantizer apart (the torch ops); from the same state, the
    fused and the apart step give each BN layer's output the same codes on ≥ 99.9 % of the
    values and never codes more than one apart, the same running statistics, batch
    counts, observer state and search schedule, and close parameter gradients; so do
    quantizers whose observers are off (a fixed range)."""
    import copy

    from qatlab.nn.modules import QuantConv2d

    torch.manual_seed(0)
    w = QuantSpec(bits=4, symmetric=True, granularity="channel", estimator="minmax" if estimator == "mse" else estimator)
    a = QuantSpec(bits=4, symmetric=False, granularity=granularity, axis=1, estimator=estimator)
    x = torch.randn(16, 3, 6, 6) * 2
    q = prepare_qat(_Block(), w, a, ste)
    calibrate(q, [x, x * 0.5])
    set_observe(q, observing)  # off: the clipped quantizers keep their calibrated ranges
    for m in q.modules():
        if isinstance(m, FakeQuant):
            m.refresh_every = 2  # a search on the second step, tracking between
    q.train()

    def run(model: torch.nn.Module, xi: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        outs: list[torch.Tensor] = []
        layers = [m for m in model.modules() if isinstance(m, QuantConv2d) and m.bn is not None]
        hooks = [m.register_forward_hook(lambda mod, i, o: outs.append(o.detach())) for m in layers]
        model.zero_grad(set_to_none=True)
        model(xi).square().sum().backward()
        for h in hooks:
            h.remove()
        codes = [o / m.act_fq.qparams(o.shape).scale.reshape(1, -1, 1, 1) for o, m in zip(outs, layers)]
        return codes, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    for step in range(4):
        xi = x * (1 + 0.1 * step)
        apart = copy.deepcopy(q)
        with fused.fused_disabled():
            codes_t, grads_t = run(apart, xi)
        codes_f, grads_f = run(q, xi)
        assert len(codes_f) == len(codes_t) == 2
        for cf, ct in zip(codes_f, codes_t):
            diff = (cf - ct).abs()
            assert float(diff.max()) < 1.001, f"step {step}: codes {float(diff.max()):.3f} apart"
            assert float((diff < 1e-3).float().mean()) >= 0.999, f"step {step}: {int((diff >= 1e-3).sum())} codes differ"
        sf, st_ = q.state_dict(), apart.state_dict()
        for k in sf:
            if k.endswith("num_batches_tracked"):
                assert int(sf[k]) == int(st_[k]) == step + 1, k  # calibration runs in eval mode
            elif sf[k].is_floating_point():
                torch.testing.assert_close(sf[k], st_[k], rtol=1e-4, atol=1e-5, msg=k)
        for mf, mt in zip(q.modules(), apart.modules()):
            if isinstance(mf, FakeQuant):
                assert mf._since_search == mt._since_search
        assert grads_f.keys() == grads_t.keys()
        for n in grads_f:
            torch.testing.assert_close(grads_f[n], grads_t[n], rtol=1e-2, atol=1e-2 * (1 + float(grads_t[n].abs().max())), msg=n)
        with torch.no_grad():
            for n, p in q.named_parameters():
                if n in grads_f:
                    p -= 1e-3 * grads_f[n]


def test_the_fused_path_runs_in_a_live_bn_layer_and_not_after_the_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = FakeQuant.after_batch_norm

    def spy(self, x, bn, clamp=None):  # type: ignore[no-untyped-def]
        y = real(self, x, bn, clamp)
        calls.append(y is not None)
        return y

    monkeypatch.setattr(FakeQuant, "after_batch_norm", spy)
    q = prepare_qat(_Block(), QuantSpec(bits=4, symmetric=True), QuantSpec(bits=4, symmetric=False), "pact")
    x = torch.randn(4, 3, 6, 6)
    calibrate(q, [x])
    q.train()
    set_observe(q, True)
    q(x)
    set_observe(q, False)  # the non-ReLU output's clipped quantizer on a fixed range
    q(x)
    assert calls == [True, True, True, True]
    freeze_bn(q)
    q(x)
    assert calls == [True, True, True, True]


def test_threads_change_nothing() -> None:
    """A tensor large enough for the kernels' threads: the same bits on 1 and 2 threads
    (statistics per channel, backward sums per segment added in a fixed order)."""
    gen = torch.Generator().manual_seed(5)
    shape = (16, 24, 14, 14)
    x, gamma, beta = _inputs(gen, shape, 1.0, 0)
    dy = torch.randn(shape, generator=gen)
    results = []
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            s = torch.tensor([0.05], requires_grad=True)
            zp = torch.tensor([7.3], requires_grad=True)
            g, b, xk = gamma.clone().requires_grad_(), beta.clone().requires_grad_(), x.clone().requires_grad_()
            plan = BNQuantPlan(shape, AFFINE, False, 0, 15, False, SCALE_FLOOR, (0.0, 6.0), 0.01)
            out = batch_norm_fake_quant_fused(xk, g, b, None, None, 0.1, 1e-5, plan, s, zp)
            assert out is not None
            out.y.backward(dy)
            results.append([out.y.detach(), xk.grad, g.grad, b.grad, s.grad, zp.grad])
    finally:
        torch.set_num_threads(prev)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_a_nan_input_meets_the_same_error_as_with_the_modules_apart() -> None:
    """The fused call declines a NaN statistic; BN and the observer then run apart and
    raise as they always did."""
    q = prepare_qat(_Block(), QuantSpec(bits=4, symmetric=True), QuantSpec(bits=4, symmetric=False), "clipped")
    x = torch.randn(4, 3, 6, 6)
    calibrate(q, [x])
    q.train()
    set_observe(q, True)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    errors = []
    for disabled in (False, True):
        with pytest.raises(ValueError) as e:
            if disabled:
                with fused.fused_disabled():
                    q(bad)
            else:
                q(bad)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "NaN" in errors[0]
