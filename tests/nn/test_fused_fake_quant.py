"""The fused fake-quant kernels (``qatlab.nn.fused``) against the reference paths.

Contract checked on random inputs (shapes, tiny and huge scales, zero points in and out
of range, 2-16 bits, per tensor and per channel on any axis, values on rounding ties,
a clamp in front or not):

* outputs: bit for bit (compared as int32 patterns, so even the sign of a zero counts)
  with the affine reference ``fake_quantize_rows_reference`` (quantize, then dequantize)
  and with torch's native fake-quant kernels;
* ``dx``: bit for bit with the torch-op paths' ``dy * mask`` and clamp backward;
* LSQ's scale and zero-point gradients and PACT's clip gradient: sums over the tensor.
  The kernels add float32 partial sums of 256 terms in double; torch sums in float32
  in its own order. Both are within a few float32 roundings of the exact sum relative
  to ``Σ|terms|`` (never to the sum itself, which may cancel to near zero), so they are
  compared with ``1e-5 · Σ|terms|`` against a float64 evaluation of the same formula
  and ``1e-4 · Σ|terms|`` against the torch-op path's float32 autograd result.

Skipped where no C++ compiler exists (or ``QATLAB_FUSED=0``); where one does, a build
failure fails the tests instead of silently running the fallback.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from qatlab.nn import FakeQuant, calibrate, fused, prepare_qat, set_observe
from qatlab.nn.fake_quant import SCALE_FLOOR, _PACTFast
from qatlab.nn.fused import build
from qatlab.nn.fused.ops import (
    ASYMMETRIC,
    EMA,
    REPLACE,
    RUNNING_MINMAX,
    SYMMETRIC_SIGNED,
    SYMMETRIC_UNSIGNED,
    ObservePlan,
    fake_quant_fused,
    observe_fake_quant_fused,
    pact_fake_quant_fused,
    qparams_from_range_fused,
)
from qatlab.nn.ste import lsq_fake_quant
from qatlab.quant import QuantSpec, qparams_from_range
from qatlab.quant.affine import fake_quantize_rows_reference
from qatlab.quant.granularity import Layout
from qatlab.quant.qparams import scale_divisor
from tests.nn.conftest import NEEDS_KERNELS, assert_bitwise, observe_reference, rows_of

pytestmark = NEEDS_KERNELS


def _bshape(x: torch.Tensor, axis: int | None) -> list[int]:
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    return shape


def _qrange(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _oracle(x, dy, raw_s, zp, qmin, qmax, axis, g, floor, clamp):  # type: ignore[no-untyped-def]
    """The contract written out with elementary float32 ops, sums in float64."""
    s = raw_s.abs().clamp(min=floor) if floor else raw_s
    z = zp.clamp(qmin, qmax).round()
    if z.numel() == 1 and s.numel() > 1:
        z = z.expand(s.numel())
    bs = _bshape(x, axis)
    v = x if clamp is None else x.clamp(*clamp)
    t = torch.round(v * (1.0 / s).reshape(bs)) + z.reshape(bs)
    y = (t.clamp(qmin, qmax) - z.reshape(bs)) * s.reshape(bs)
    dv = dy * ((t >= qmin) & (t <= qmax)).float()
    if clamp is None:
        dx = dv
    else:
        lo, hi = (-math.inf if clamp[0] is None else clamp[0]), (math.inf if clamp[1] is None else clamp[1])
        dx = torch.where((x >= lo) & (x <= hi), dv, torch.zeros(()))
    dims = [d for d in range(x.dim()) if d != axis]
    d64 = lambda a: a.double().sum(dims) if dims else a.double()
    terms = dy.double() * y.double() - dv.double() * v.double()
    ds = g * d64(terms) / s.double()
    ds_scale = g * d64(dy.double().abs() * y.double().abs() + dv.double().abs() * v.double().abs()) / s.double()
    if floor:
        ds = torch.where(raw_s.abs() >= floor, ds, torch.zeros((), dtype=torch.float64)) * torch.sign(raw_s).double()
    dz = -g * s.double() * d64(dy.double() - dv.double())
    dz_scale = g * s.double() * d64(dy.double().abs() + dv.double().abs())
    return y, dx, ds, ds_scale, dz, dz_scale, s, z


def _values(shape: list[int], s_bcast: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int, gen: torch.Generator) -> torch.Tensor:
    """Random values over (and past) the grid, a quarter of them exactly on ties or grid points."""
    n = math.prod(shape)
    codes = torch.randint(qmin - 4, qmax + 5, shape, generator=gen).float() - z
    frac = torch.rand(shape, generator=gen)
    kind = torch.randint(0, 4, shape, generator=gen)
    frac = torch.where(kind == 0, torch.full(shape, 0.5), torch.where(kind == 1, torch.zeros(shape), frac))
    x = ((codes + frac) * s_bcast).float()
    if n:
        x.view(-1)[0] = -0.0
    return x


GRANULARITY = st.sampled_from(["tensor", "channel"])


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dims=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    granularity=GRANULARITY,
    bits=st.integers(2, 16),
    signed=st.booleans(),
    log2_scale=st.floats(-24.0, 24.0),
    learned=st.booleans(),
    zp_learned=st.booleans(),
    clamp=st.sampled_from([None, (0.0, 6.0), (-1.0, 1.0), (None, 0.5), (-2.0, None)]),
    g=st.sampled_from([1.0, 0.05]),
)
def test_fake_quant_fused_matches_the_contract(seed, dims, granularity, bits, signed, log2_scale, learned, zp_learned, clamp, g) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    qmin, qmax = _qrange(bits, signed)
    axis = None if granularity == "tensor" else int(torch.randint(0, len(dims), (1,), generator=gen))
    c = 1 if axis is None else dims[axis]
    scale = (2.0**log2_scale) * (0.5 + torch.rand(c, generator=gen))
    if learned:  # raw learned steps: negative and below-the-floor ones included
        scale = torch.where(torch.rand(c, generator=gen) < 0.2, -scale, scale)
        scale = torch.where(torch.rand(c, generator=gen) < 0.1, torch.full((c,), 3e-9), scale)
    scale = scale.float()
    if zp_learned:
        zp = (torch.rand(c, generator=gen) * (qmax - qmin + 6) + qmin - 3).float()
    else:
        zp = torch.randint(qmin, qmax + 1, (c,), generator=gen).float()
    floor = SCALE_FLOOR if learned else None
    s_eff = scale.abs().clamp(min=SCALE_FLOOR) if learned else scale
    z_eff = zp.clamp(qmin, qmax).round()
    bs = _bshape(torch.empty(dims), axis)
    x = _values(dims, s_eff.reshape(bs), z_eff.reshape(bs), qmin, qmax, gen)
    if clamp is not None:  # values on the clamp's edges
        for i, b in enumerate(b for b in clamp if b is not None):
            if x.numel() > i + 1:
                x.view(-1)[i + 1] = b
    dy = torch.randn(dims, generator=gen)
    if x.numel() > 2:
        dy.view(-1)[-1] = -dy.view(-1)[-1].abs()  # a negative dy meeting mask 0 keeps its -0

    xi = x.clone().requires_grad_()
    si = scale.clone().requires_grad_()
    zi = zp.clone().requires_grad_()
    y = fake_quant_fused(xi, si, zi, qmin, qmax, axis, g, floor, clamp)
    y.backward(dy)
    y_o, dx_o, ds_o, ds_scale, dz_o, dz_scale, s_o, z_o = _oracle(x, dy, scale, zp, qmin, qmax, axis, g, floor, clamp)

    # Values: the affine reference (quantize, dequantize) and torch's kernels, bit for bit.
    v = x if clamp is None else x.clamp(*clamp)
    ref = fake_quantize_rows_reference(rows_of(v, axis), s_o, z_o.to(torch.int32), qmin, qmax)
    assert_bitwise(rows_of(y.detach(), axis), ref)
    if axis is None:
        native = torch.fake_quantize_per_tensor_affine(v, s_o, z_o.to(torch.int32), qmin, qmax)
    else:
        native = torch.fake_quantize_per_channel_affine(v, s_o, z_o.to(torch.int32), axis, qmin, qmax)
    assert_bitwise(y.detach(), native)
    assert_bitwise(y.detach(), y_o)
    assert_bitwise(xi.grad, dx_o)
    # Reductions: float64 of the same formula, within float32 rounding of the terms.
    assert ((si.grad.double() - ds_o).abs() <= 1e-5 * ds_scale + 1e-30).all(), (si.grad, ds_o)
    assert ((zi.grad.double() - dz_o).abs() <= 1e-5 * dz_scale + 1e-30).all(), (zi.grad, dz_o)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dims=st.lists(st.integers(1, 7), min_size=2, max_size=4),  # the torch-op per-channel path needs 2-D
    granularity=GRANULARITY,
    bits=st.sampled_from([2, 4, 8]),
    log2_scale=st.floats(-8.0, 4.0),
    clamp=st.sampled_from([None, (0.0, 6.0)]),
)
def test_lsq_fused_equals_the_torch_op_path(seed, dims, granularity, bits, log2_scale, clamp) -> None:  # type: ignore[no-untyped-def]
    """Against what FakeQuant ran before (clamp, |s| floored, ``lsq_fake_quant``)."""
    gen = torch.Generator().manual_seed(seed)
    qmin, qmax = _qrange(bits, True)
    axis = None if granularity == "tensor" else int(torch.randint(0, len(dims), (1,), generator=gen))
    c = 1 if axis is None else dims[axis]
    scale = ((2.0**log2_scale) * (0.5 + torch.rand(c, generator=gen))).float()
    zp = torch.zeros(c) if axis is not None else torch.randint(qmin, qmax + 1, (1,), generator=gen).float()
    x = torch.randn(dims, generator=gen) * float(scale.max()) * 2 ** (bits - 1)
    dy = torch.randn(dims, generator=gen)
    g = 0.03
    out = []
    for use in ("fused", "ops"):
        xi, si, zi = x.clone().requires_grad_(), scale.clone().requires_grad_(), zp.clone().requires_grad_(axis is None)
        if use == "fused":
            y = fake_quant_fused(xi, si, zi, qmin, qmax, axis, g, SCALE_FLOOR, clamp)
        else:
            xv = xi if clamp is None else xi.clamp(*clamp)
            y = lsq_fake_quant(xv, si.abs().clamp(min=SCALE_FLOOR), zi, qmin, qmax, axis, g)
        y.backward(dy)
        out.append((y.detach(), xi.grad, si.grad, zi.grad))
    (y_f, dx_f, ds_f, dz_f), (y_t, dx_t, ds_t, dz_t) = out
    assert torch.equal(y_f, y_t)  # equal values; the old path may give -0 where the contract has +0
    assert_bitwise(dx_f, dx_t)
    _, _, _, ds_scale, _, dz_scale, _, _ = _oracle(x, dy, scale, zp, qmin, qmax, axis, g, SCALE_FLOOR, clamp)
    assert ((ds_f.double() - ds_t.double()).abs() <= 1e-4 * ds_scale + 1e-30).all()
    if axis is None:
        assert ((dz_f.double() - dz_t.double()).abs() <= 1e-4 * dz_scale + 1e-30).all()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    bits=st.integers(2, 16),
    alpha=st.one_of(st.floats(1e-3, 8.0), st.sampled_from([0.0, -0.5, 1e-14, 2.0, 1e6])),
    clamp=st.sampled_from([None, (0.0, 6.0), (None, 1.0)]),
)
def test_pact_fused_matches_the_fast_path_and_the_native_kernel(seed, bits, alpha, clamp) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    qmax = 2**bits - 1
    x = torch.randn(4, 5, 6, generator=gen) * max(1.0, abs(alpha))
    x.view(-1)[:5] = torch.tensor([alpha, 0.0, -alpha, alpha * 0.999, -0.0])
    if alpha > 0:  # exact ties of the grid
        x.view(-1)[5:9] = (torch.tensor([0.5, 1.5, 2.5, qmax - 0.5]) * (alpha / qmax)).float()
    dy = torch.randn(x.shape, generator=gen)
    out = []
    for fn in ("fused", "fast"):
        xi, a = x.clone().requires_grad_(), torch.nn.Parameter(torch.tensor([alpha]))
        if fn == "fused":
            y = pact_fake_quant_fused(xi, a, bits, clamp)
        else:
            y = _PACTFast.apply(xi if clamp is None else xi.clamp(*clamp), a, qmax)
        y.backward(dy)
        out.append((y.detach(), xi.grad, a.grad))
    (y_f, dx_f, da_f), (y_p, dx_p, da_p) = out
    assert torch.equal(y_f, y_p)
    assert_bitwise(dx_f, dx_p)
    tol = 1e-5 * float(dy.abs().sum()) + 1e-30
    assert abs(float(da_f) - float(da_p)) <= tol
    # The value contract: torch's per-tensor kernel on clamp(x, 0, α), zero signs included.
    a32 = torch.tensor(alpha, dtype=torch.float32)
    s = (a32 / qmax).clamp(min=1e-12)
    v = x if clamp is None else x.clamp(*clamp)
    if alpha > 0:
        native = torch.fake_quantize_per_tensor_affine(
            torch.minimum(v.clamp(min=0), a32), s.reshape(1), torch.zeros(1, dtype=torch.int32), 0, qmax
        )
        assert_bitwise(y_f, native)


def test_large_tensors_use_threads_and_sum_in_a_fixed_order() -> None:
    """Many chunks: the result must not depend on the thread count (chunk sums are added in order)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 70001, generator=gen) * 4
    dy = torch.randn(x.shape, generator=gen)
    got = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for axis in (None, 0):
                c = 1 if axis is None else 3
                xi = x.clone().requires_grad_()
                s = torch.full((c,), 0.07, requires_grad=True)
                z = torch.full((c,), 3.0, requires_grad=True)
                fake_quant_fused(xi, s, z, -8, 7, axis, 0.01, SCALE_FLOOR).backward(dy)
                got.append((threads, axis, xi.grad, s.grad, z.grad))
    finally:
        torch.set_num_threads(before)
    one = {a: r for t, a, *r in got if t == 1}
    for _threads, a, *r in got:
        for u, v in zip(r, one[a]):
            assert_bitwise(u, v)
    y_o, dx_o, ds_o, ds_scale, dz_o, dz_scale, *_ = _oracle(
        x, dy, torch.full((3,), 0.07), torch.full((3,), 3.0), -8, 7, 0, 0.01, SCALE_FLOOR, None
    )
    assert ((one[0][1].double() - ds_o).abs() <= 1e-5 * ds_scale).all()
    assert ((one[0][2].double() - dz_o).abs() <= 1e-5 * dz_scale).all()


def test_only_the_gradients_asked_for_are_computed() -> None:
    x = torch.randn(40)
    s = torch.tensor([0.1], requires_grad=True)
    z = torch.tensor([0.0])
    fake_quant_fused(x, s, z, -8, 7, None, 1.0, SCALE_FLOOR).sum().backward()
    assert s.grad is not None and z.grad is None


def test_bad_parameters_are_named() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="scale has 2 values"):
        fake_quant_fused(x, torch.ones(2), torch.zeros(1), 0, 15, 1)
    with pytest.raises(ValueError, match="zero_point has 2 values"):
        fake_quant_fused(x, torch.ones(3), torch.zeros(2), 0, 15, 1)
    with pytest.raises(ValueError, match="qmin 5, qmax 5"):
        fake_quant_fused(x, torch.ones(1), torch.zeros(1), 5, 5)
    with pytest.raises(ValueError, match="alpha must hold one value"):
        pact_fake_quant_fused(x, torch.ones(2), 4)


@pytest.mark.parametrize("ste", ["lsq", "clipped", "pact"])
@pytest.mark.parametrize("phase", ["live", "frozen"])
def test_a_qat_model_is_the_same_with_and_without_the_kernels(ste: str, phase: str) -> None:
    """A model with a fused ReLU6, a residual add, per-channel weights: the fused and the
    torch-op paths give equal outputs, equal input gradients and close parameter gradients."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(2, 6, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(6)
            self.act = torch.nn.ReLU6()
            self.c2 = torch.nn.Conv2d(6, 6, 1)
            self.fc = torch.nn.Linear(6 * 25, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.bn(self.c1(x)))
            return self.fc((self.c2(h) + h).flatten(1))

    w = QuantSpec(bits=4, symmetric=True, granularity="channel")
    a = QuantSpec(bits=4, symmetric=False)
    q = prepare_qat(Net(), w, a, ste)
    x = torch.randn(8, 2, 5, 5) * 2
    calibrate(q, [x, x * 0.5])
    set_observe(q, phase == "live")
    if phase == "frozen":
        from qatlab.nn import freeze_bn

        freeze_bn(q)
    q.train()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    results = []
    for mode in ("fused", "ops"):
        q.load_state_dict(state)
        q.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        if mode == "fused":
            y = q(xi)
        else:
            with fused.fused_disabled():
                y = q(xi)
        y.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in q.named_parameters() if p.grad is not None}
        results.append((y.detach(), xi.grad, grads))
    (y_f, dx_f, g_f), (y_t, dx_t, g_t) = results
    assert torch.equal(y_f, y_t)
    torch.testing.assert_close(dx_f, dx_t, rtol=1e-5, atol=1e-6)
    assert g_f.keys() == g_t.keys()
    for n in g_f:
        torch.testing.assert_close(g_f[n], g_t[n], rtol=1e-3, atol=1e-4 * (1 + float(g_t[n].abs().max())), msg=n)


def test_fakequant_keeps_the_clamp_when_disabled() -> None:
    fq = FakeQuant(QuantSpec(bits=8, symmetric=False), "clipped", "act")
    fq.enabled = False
    fq.observe = False
    x = torch.linspace(-3, 9, 13)
    assert torch.equal(fq(x, None, (0.0, 6.0)), x.clamp(0, 6))


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build.ENV_SWITCH, "0")
    assert build.library() is None and not fused.enabled()
    assert not fused.fusable(torch.randn(3))


def test_a_failed_build_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "/bin/false")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert build.library() is None
        assert build.library() is None
    assert len([w for w in seen if "fused fake-quant kernels unavailable" in str(w.message)]) == 1
    assert "exited 1" in (build.load_error() or "")


def test_the_build_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path))
    lib = build.load()
    compiler = build.find_compiler()
    assert compiler is not None and build.library_path(compiler).is_file() and lib.qatlab_fused_abi() == build.ABI

    def no_build(*_a: object) -> None:
        raise AssertionError("rebuilt although the cached library exists")

    monkeypatch.setattr(build, "build", no_build)
    assert build.load().qatlab_fused_abi() == build.ABI


def test_observed_qparams_follow_every_change_of_the_range() -> None:
    """The frozen quantizer keeps its qparams between calls; any change of lo/hi (a new
    tensor, an in-place update, a swapped ``.data``) must reach the output."""
    fq = FakeQuant(QuantSpec(bits=4, symmetric=False), "clipped", "act")
    x = torch.linspace(-2, 3, 50)
    fq(x)
    fq.observe = False

    def expected() -> torch.Tensor:
        qp = fq.qparams()
        return torch.fake_quantize_per_tensor_affine(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax)

    assert torch.equal(fq(x), expected())
    fq.hi.mul_(0.5)
    assert torch.equal(fq(x), expected())
    fq.lo = fq.lo * 0.25
    assert torch.equal(fq(x), expected())
    fq.hi.data = torch.tensor([5.0])
    assert torch.equal(fq(x), expected())


# ---- observed quantizers: range, qparams and fake quantization in one kernel call ------

OBS_MODES = {"replace": REPLACE, "minmax": RUNNING_MINMAX, "ema": EMA}


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN matching NaN. A range's zero may carry either sign: torch's own
    amin/amax pick +0 or -0 by the reduction's length and order; no qparams depend on it."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _obs_spec(bits: int, scheme: str, narrow: bool, halfrange: bool, decay: float) -> QuantSpec:
    symmetric = scheme != "asym"
    signed = scheme == "sym_signed" if symmetric else False
    return QuantSpec(
        bits=bits,
        symmetric=symmetric,
        signed=signed,
        narrow_range=narrow and signed,
        scale_rule="halfrange" if halfrange else "standard",
        ema_decay=decay,
    )


def _plan(spec: QuantSpec, shape: tuple[int, ...], axis: int | None, clamp) -> ObservePlan:  # type: ignore[no-untyped-def]
    scheme = ASYMMETRIC if not spec.symmetric else (SYMMETRIC_SIGNED if spec.is_signed else SYMMETRIC_UNSIGNED)
    return ObservePlan(shape, axis, spec.qmin, spec.qmax, scale_divisor(spec), scheme, spec.ema_decay, clamp)


def _magnitudes(shape: list[int], kind: str, log2_mag: int, gen: torch.Generator) -> torch.Tensor:
    """Values of one magnitude: random, a constant tensor, all zeros, or non-negative."""
    base = torch.randn(shape, generator=gen)
    if kind == "constant":
        base = torch.full(shape, float(torch.randn(1, generator=gen)))
    elif kind == "zeros":
        base = torch.zeros(shape)
    elif kind == "nonneg":
        base = base.abs()
    return (base.double() * 2.0**log2_mag).float()


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dims=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    granularity=GRANULARITY,
    bits=st.integers(2, 16),
    scheme=st.sampled_from(["asym", "sym_signed", "sym_unsigned"]),
    narrow=st.booleans(),
    halfrange=st.booleans(),
    mode=st.sampled_from(sorted(OBS_MODES)),
    decay=st.sampled_from([0.9, 0.99, 0.0, 0.5]),
    kind=st.sampled_from(["random", "random", "constant", "zeros", "nonneg"]),
    log2_mag=st.integers(-140, 120),
    search=st.booleans(),
    clamp=st.sampled_from([None, (0.0, 6.0), (-1.0, 1.0), (None, 0.5)]),
)
def test_observed_fused_equals_observer_then_qparams_then_quantizer(  # type: ignore[no-untyped-def]
    seed, dims, granularity, bits, scheme, narrow, halfrange, mode, decay, kind, log2_mag, search, clamp
) -> None:
    gen = torch.Generator().manual_seed(seed)
    spec = _obs_spec(bits, scheme, narrow, halfrange, decay)
    axis = None if granularity == "tensor" else int(torch.randint(0, len(dims), (1,), generator=gen))
    c = 1 if axis is None else dims[axis]
    x = _magnitudes(dims, kind, log2_mag, gen)
    m = OBS_MODES[mode]
    old_lo = -_magnitudes([c], "nonneg", log2_mag + int(torch.randint(-2, 3, (1,), generator=gen)), gen)
    old_hi = _magnitudes([c], "nonneg", log2_mag + int(torch.randint(-2, 3, (1,), generator=gen)), gen)
    frac = None
    if search:
        frac = torch.stack([-torch.rand(c, generator=gen), torch.rand(c, generator=gen)])
        frac[:, 0] = torch.tensor([-1.0, 1.0])  # a fraction of 1: the whole magnitude
    dy = torch.randn(dims, generator=gen)

    xi = x.clone().requires_grad_()
    y, lo, hi, scale, zp = observe_fake_quant_fused(xi, _plan(spec, tuple(dims), axis, clamp), m, old_lo, old_hi, frac)
    y.backward(dy)

    lo_r, hi_r = observe_reference(x, axis, m, old_lo, old_hi, frac, spec.ema_decay, clamp)
    assert _same_values(lo, lo_r) and _same_values(hi, hi_r), (lo, lo_r, hi, hi_r)
    qp = qparams_from_range(lo_r, hi_r, spec, Layout("tensor"))
    assert_bitwise(scale, qp.scale)
    assert torch.equal(zp, qp.zero_point) and zp.dtype == torch.int32
    v = x if clamp is None else x.clamp(*clamp)
    if axis is None:
        native = torch.fake_quantize_per_tensor_affine(v, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
    else:
        native = torch.fake_quantize_per_channel_affine(v, qp.scale, qp.zero_point, axis, qp.qmin, qp.qmax)
    assert_bitwise(y.detach(), native)
    # What FakeQuant ran before: the fused fixed quantizer with the observed qparams.
    assert_bitwise(y.detach(), fake_quant_fused(x, qp.scale, qp.zero_point.float(), qp.qmin, qp.qmax, axis, clamp=clamp))
    y_o, dx_o, *_ = _oracle(x, dy, qp.scale, qp.zero_point.float(), qp.qmin, qp.qmax, axis, 1.0, None, clamp)
    assert_bitwise(xi.grad, dx_o)


FLOAT32_RANGES = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(-(2.0**-99), 2.0**-99, width=32),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 2.0**-100, -(2.0**-100), 3.4028234663852886e38, -3.4028234663852886e38]),
)


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(st.tuples(FLOAT32_RANGES, FLOAT32_RANGES), min_size=1, max_size=8),
    bits=st.integers(2, 16),
    scheme=st.sampled_from(["asym", "sym_signed", "sym_unsigned"]),
    narrow=st.booleans(),
    halfrange=st.booleans(),
)
# lo / scale on a tie (-2.5, -0.5 with scale 1): the zero point rounds half to even.
@example(pairs=[(-2.5, 4.5), (-0.5, 6.5), (0.0, 0.0)], bits=3, scheme="asym", narrow=False, halfrange=False)
def test_kernel_qparams_equal_qparams_from_range_bit_for_bit(pairs, bits, scheme, narrow, halfrange) -> None:  # type: ignore[no-untyped-def]
    """The qparams arithmetic over all of float32: huge, tiny, denormal and zero-width ranges."""
    spec = _obs_spec(bits, scheme, narrow, halfrange, 0.9)
    lo = torch.tensor([min(a, b) for a, b in pairs], dtype=torch.float32)
    hi = torch.tensor([max(a, b) for a, b in pairs], dtype=torch.float32)
    ref = qparams_from_range(lo, hi, spec, Layout("tensor"))
    scale, zp = qparams_from_range_fused(lo, hi, _plan(spec, (len(pairs),), None, None))
    assert_bitwise(scale, ref.scale)
    assert torch.equal(zp, ref.zero_point)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["x", "state"])
@pytest.mark.parametrize("estimator", ["ema", "minmax"])
def test_a_non_finite_range_raises_and_keeps_the_state_as_the_torch_path(bad: float, where: str, estimator: str) -> None:
    spec = QuantSpec(bits=4, symmetric=False, estimator=estimator)
    gen = torch.Generator().manual_seed(2)
    x0, x = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    results = []
    for mode in ("fused", "ops"):
        fq = FakeQuant(spec, "clipped", "act")
        fq(x0)
        xb = x.clone()
        if where == "x":
            xb[1, 2] = bad
        else:  # both ends, so that a running min/max keeps it whatever its sign
            fq.lo, fq.hi = torch.tensor([bad]), torch.tensor([bad])
        with pytest.raises(ValueError, match="NaN or ±Inf"):
            if mode == "fused":
                fq(xb)
            else:
                with fused.fused_disabled():
                    fq(xb)
        results.append((fq.lo.clone(), fq.hi.clone()))
    (lo_f, hi_f), (lo_t, hi_t) = results
    assert _same_values(lo_f, lo_t) and _same_values(hi_f, hi_t)
    with pytest.raises(ValueError, match="NaN or ±Inf"):
        qparams_from_range_fused(torch.tensor([0.0, bad]), torch.tensor([1.0, 1.0]), _plan(spec, (2,), None, None))


def _observed_pair(spec: QuantSpec, role: str, ste: str = "clipped") -> tuple[FakeQuant, FakeQuant]:
    return FakeQuant(spec, ste, role), FakeQuant(spec, ste, role)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dims=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    granularity=st.sampled_from(["tensor", "channel", "group:2", "element"]),
    bits=st.integers(2, 16),
    symmetric=st.booleans(),
    role=st.sampled_from(["act", "weight"]),
    estimator=st.sampled_from(["minmax", "ema", "mse"]),
    clamp=st.sampled_from([None, (0.0, 6.0)]),
    log2_mag=st.integers(-60, 60),
)
def test_fakequant_fused_observer_equals_the_torch_op_path(  # type: ignore[no-untyped-def]
    seed, dims, granularity, bits, symmetric, role, estimator, clamp, log2_mag
) -> None:
    """Several training steps of one observed quantizer, on the kernels and on the torch ops
    (``QATLAB_FUSED=0``'s path): equal outputs, input gradients, state and qparams."""
    gen = torch.Generator().manual_seed(seed)
    if granularity == "group:2" and math.prod(dims) // dims[0] % 2:
        dims = [dims[0], 2, *dims[1:]]
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity, axis=0, estimator=estimator, mse_grid=8)
    fq_f, fq_t = _observed_pair(spec, role)
    fq_f.refresh_every = fq_t.refresh_every = 3
    for step in range(5):
        x = _magnitudes(dims, "random" if step != 2 else "constant", log2_mag + step % 2, gen)
        dy = torch.randn(dims, generator=gen)
        out = []
        for fq, fused_on in ((fq_f, True), (fq_t, False)):
            xi = x.clone().requires_grad_()
            if fused_on:
                y = fq(xi, None, clamp)
            else:
                with fused.fused_disabled():
                    y = fq(xi, None, clamp)
            y.backward(dy)
            out.append((y.detach(), xi.grad))
        (y_f, dx_f), (y_t, dx_t) = out
        assert torch.equal(y_f, y_t)  # the torch ops may give -0 where the kernels give +0
        assert torch.equal(dx_f, dx_t)
        assert _same_values(fq_f.lo, fq_t.lo) and _same_values(fq_f.hi, fq_t.hi)
        assert fq_f._since_search == fq_t._since_search
        qp_f, qp_t = fq_f.qparams(), fq_t.qparams()
        assert_bitwise(qp_f.scale, qp_t.scale)
        assert torch.equal(qp_f.zero_point, qp_t.zero_point)


@pytest.mark.parametrize("ste", ["lsq", "pact"])
def test_learned_quantizers_calibrate_on_the_kernels_as_on_the_torch_ops(ste: str) -> None:
    spec = QuantSpec(bits=4, symmetric=False) if ste == "lsq" else QuantSpec(bits=4, symmetric=True, signed=False)
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randn(4, 9, generator=gen) * (1 + i) for i in range(3)]
    fq_f, fq_t = _observed_pair(spec, "act", ste)
    fq_f.calibrating = fq_t.calibrating = True
    for x in batches:
        y_f = fq_f(x)
        with fused.fused_disabled():
            y_t = fq_t(x)
        assert torch.equal(y_f, y_t)
        assert _same_values(fq_f.lo, fq_t.lo) and _same_values(fq_f.hi, fq_t.hi)


def test_observed_fused_is_the_same_on_any_thread_count() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 70001, generator=gen) * 3
    x[1, 5] = 40.0
    spec = QuantSpec(bits=5, symmetric=False, ema_decay=0.9)
    before = torch.get_num_threads()
    got = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for axis in (None, 0):
                c = 1 if axis is None else 3
                xi = x.clone().requires_grad_()
                y, lo, hi, s, z = observe_fake_quant_fused(
                    xi, _plan(spec, (3, 70001), axis, (-5.0, 5.0)), EMA, -torch.ones(c), torch.ones(c)
                )
                y.backward(torch.ones_like(y))
                got.append((threads, axis, (y.detach(), xi.grad, lo, hi, s)))
    finally:
        torch.set_num_threads(before)
    one = {a: r for t, a, r in got if t == 1}
    for _t, a, r in got:
        for u, v in zip(r, one[a]):
            assert_bitwise(u, v)


def test_observed_fused_refuses_bad_arguments() -> None:
    spec = QuantSpec(bits=4, symmetric=False)
    plan = _plan(spec, (4, 3), 1, None)
    with pytest.raises(ValueError, match="does not fit the plan"):
        observe_fake_quant_fused(torch.randn(5, 3), plan)
    with pytest.raises(TypeError, match="float32 CPU tensor"):
        observe_fake_quant_fused(torch.randn(4, 3, dtype=torch.float64), plan)
    with pytest.raises(ValueError, match="need the state lo and hi"):
        observe_fake_quant_fused(torch.randn(4, 3), plan, EMA)
    with pytest.raises(ValueError, match="lo: expected a contiguous float32"):
        observe_fake_quant_fused(torch.randn(4, 3), plan, EMA, torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="mode must be"):
        observe_fake_quant_fused(torch.randn(4, 3), plan, 7)
    with pytest.raises(ValueError, match="qmin 3, qmax 3"):
        ObservePlan((4,), None, 3, 3, 1.0, ASYMMETRIC)
    with pytest.raises(ValueError, match="scheme must be"):
        ObservePlan((4,), None, 0, 3, 1.0, 5)


# ---- a weight in BatchNorm's folded frame: fq(W·f)/f in the quantizer's own call ----------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dims=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    granularity=st.sampled_from(["tensor", "channel", "group:2"]),
    ste=st.sampled_from(["clipped", "lsq"]),
    bits=st.integers(2, 8),
    estimator=st.sampled_from(["minmax", "mse"]),
    log2_f=st.integers(-8, 8),
)
def test_folded_weight_equals_the_product_the_quantizer_and_the_quotient(seed, dims, granularity, ste, bits, estimator, log2_f) -> None:  # type: ignore[no-untyped-def]
    """``fq(W, fold=f)`` against ``fq(W * f) / f`` on the torch ops, over a few steps (a
    search step among them): equal values and ``dW``; the fold factors' gradient and
    LSQ's within float32 rounding of the sums."""
    gen = torch.Generator().manual_seed(seed)
    if granularity == "group:2" and math.prod(dims) // dims[0] % 2:
        dims = [dims[0], 2, *dims[1:]]
    spec = QuantSpec(bits=bits, symmetric=True, granularity=granularity, axis=0, estimator=estimator, mse_grid=8)
    fast, slow = FakeQuant(spec, ste, "weight"), FakeQuant(spec, ste, "weight")
    w0 = torch.randn(dims, generator=gen)
    for q in (fast, slow):
        q.calibrating = True
        q(w0)
        q.calibrating = False
        q.refresh_every = 2
        q.init_learned()
    f0 = (torch.rand(dims[0], generator=gen) + 0.25) * 2.0**log2_f
    shape = [-1] + [1] * (len(dims) - 1)
    for step in range(3):
        w = w0 + 0.1 * step
        dy = torch.randn(dims, generator=gen)
        out = []
        for q, kernels in ((fast, True), (slow, False)):
            wi, fi = w.clone().requires_grad_(), f0.clone().requires_grad_()
            if kernels:
                y = q(wi, None, None, fi)
            else:
                with fused.fused_disabled():
                    y = q(wi * fi.reshape(shape)) / fi.reshape(shape)
            y.backward(dy)
            out.append((y.detach(), wi.grad, fi.grad, [p.grad for p in q.parameters()]))
        (y_f, dw_f, df_f, p_f), (y_t, dw_t, df_t, p_t) = out
        assert torch.equal(y_f, y_t)
        assert torch.equal(dw_f, dw_t)
        scale = float((dy.abs() * (w.abs() + y_t.abs() / f0.reshape(shape).abs())).sum()) * float(f0.abs().max() + 1)
        assert float((df_f - df_t).abs().max()) <= 1e-5 * scale + 1e-30
        for a, b in zip(p_f, p_t):
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * (1 + float(b.abs().max())))
        assert torch.equal(fast.lo, slow.lo) and torch.equal(fast.hi, slow.hi)


def test_folded_weight_takes_the_kernels_once() -> None:
    """The fused call stands for the product, the quantizer and the quotient: one autograd
    node between the weight and the output, and the factors' gradient through it."""
    spec = QuantSpec(bits=4, symmetric=True, granularity="channel", estimator="minmax")
    q = FakeQuant(spec, "clipped", "weight")
    w = torch.randn(6, 3, 3, 3, requires_grad=True)
    f = torch.rand(6, requires_grad=True)
    y = q(w, None, None, f)
    assert type(y.grad_fn).__name__ == "_FusedObservedBackward"
    y.sum().backward()
    assert f.grad is not None and w.grad is not None
    with pytest.raises(RuntimeError):
        q(w, None, None, torch.rand(5))  # one factor per output channel
