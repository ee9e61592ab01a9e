"""Fixed-point requantization of mul, cat, mean and adaptive pools, against exact rationals.

These kinds multiply small integers (a product of two centred codes, one centred
code, a sum of a few) by M. The fixed-point path widens them by ``2^pre_shift``
first (``pre_shift_multiplier``), so it must land on ``round(v · M)`` computed
with Python fractions, except where ``v · M`` lies so close to a half-way point
that the documented error decides: the multiplier's own quantization error
``|v| · |M̃ − M|`` plus, where the multiply ends in a right shift by R, the high
multiply's rounding ``2^−(R+1)``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qatlab.intmodel import IntModel, IntModelFormatError, convert, run
from qatlab.intmodel.model import ActQ, IntOp, pre_shift_suffixes, rescale_bounds
from qatlab.intmodel.reference import AccumulatorOverflowError, _rescale, adaptive_bin_sums, run_avgpool, run_cat, run_mean, run_mul
from qatlab.nn import UnsupportedLayerError, calibrate, prepare_qat
from qatlab.nn.modules import adaptive_bin_counts
from qatlab.quant import QuantSpec
from qatlab.quant.requant import (
    FixedPointRangeError,
    multiply_pre_shifted_reference,
    pre_shift_multiplier,
    quantize_multiplier,
)

WIDE = ActQ(1.0, 0, -(2**15), 2**15 - 1)  # outputs that never saturate in these tests
HALF = Fraction(1, 2)


def _round_away(y: Fraction) -> int:
    r = math.floor(abs(y) + HALF)
    return r if y >= 0 else -r


def _tie_distance(y: Fraction) -> Fraction:
    """Distance from y to the nearest half-way point k + 1/2."""
    f = y - math.floor(y)
    return abs(f - HALF)


def _tolerance(v: int, real: float, m: int, shift: int, pre: int) -> Fraction:
    """How close to a half-way point ``v · real`` may be for the fixed path to round it
    the other way: the multiplier's error, and the high multiply's rounding when a
    right shift by R follows it."""
    approx = Fraction(m) * Fraction(2) ** (shift + pre - 31)
    tol = abs(v) * abs(approx - Fraction(real))
    right = max(-shift, 0)
    return tol + (Fraction(1, 2 ** (right + 1)) if right else 0)


def _audit(vs: list[int], reals: list[float], got: list[int], ms: list[int], shifts: list[int], pre: int, zo: int) -> tuple[int, int]:
    """Asserts every output is the exact rounding or a near-tie within tolerance, one
    code away; returns (mismatches, near-tie mismatches explained)."""
    bad = 0
    for v, real, g, m, s in zip(vs, reals, got, ms, shifts):
        y = Fraction(v) * Fraction(real)
        want = _round_away(y) + zo
        if g != want:
            bad += 1
            assert abs(Fraction(g - zo) - y) < 1, (v, real, g, want)
            assert _tie_distance(y) <= _tolerance(v, real, m, s, pre), (v, real, g, want)
    return bad, len(vs)


def _scalar_tensors(real: float, bound: int, suffix: str = "", widen: bool = True) -> dict[str, torch.Tensor]:
    if widen:
        m, s, pre = pre_shift_multiplier(np.array([real]), bound)
        extra = {f"pre_shift{suffix}": torch.tensor([pre], dtype=torch.int32)}
    else:  # the unwidened form a file without pre_shift holds
        m, s = quantize_multiplier(np.array([real]))
        extra = {}
    return {
        f"multiplier{suffix}": torch.tensor([real], dtype=torch.float64),
        f"fixed_multiplier{suffix}": torch.from_numpy(m).reshape(1),
        f"shift{suffix}": torch.from_numpy(s).reshape(1),
        **extra,
    }


def _fixed(t: dict[str, torch.Tensor], suffix: str = "") -> tuple[int, int, int]:
    pre = t.get(f"pre_shift{suffix}")
    return int(t[f"fixed_multiplier{suffix}"]), int(t[f"shift{suffix}"]), int(pre) if pre is not None else 0


# ---- the helper: bound, shift and the widened multiply --------------------------------------


@given(
    real=st.one_of(st.floats(1e-9, 0.999), st.floats(1.0, 1000.0), st.sampled_from([0.0, 2.0**-31, 2.0**-33, 0.5])),
    bound=st.integers(0, 2**31 - 1),
)
def test_pre_shift_keeps_widened_values_in_int32(real, bound):
    m, s, pre = pre_shift_multiplier(real, bound)
    m0, s0 = quantize_multiplier(real)
    assert int(m) == int(m0) and 0 <= pre <= 31
    assert int(s) == int(s0) - pre  # the same multiplier, the shift compensating the widening
    assert bound * 2**pre <= 2**31 - 1
    assert -int(s) <= 31  # the final right shift stays a valid int32 shift
    if int(m) == 0 or 31 - bound.bit_length() <= 31 + int(s0):
        assert pre == 31 - bound.bit_length()  # as wide as int32 allows, unless the shift cap binds


def test_pre_shift_refuses_values_beyond_int32():
    with pytest.raises(FixedPointRangeError, match="int32"):
        pre_shift_multiplier(0.001, 2**31)
    with pytest.raises(ValueError, match="non-negative"):
        pre_shift_multiplier(0.001, -1)


@given(
    real=st.floats(1e-7, 8.0),
    bound=st.integers(1, 2**24),
    seed=st.integers(0, 10**6),
)
def test_widened_rescale_equals_python_integers(real, bound, seed):
    """The executor's tensor path (``_rescale``) against one Python int at a time."""
    v = torch.randint(-bound, bound + 1, (64,), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)
    t = _scalar_tensors(real, bound)
    op = IntOp("mean", "m", ["x"], "y", ActQ(0.1, 3, -128, 127), {"dims": (1,), "keepdim": False, "count": 1}, t)
    got = _rescale(v, op, "fixed").tolist()
    m, s, pre = _fixed(t)
    assert got == [multiply_pre_shifted_reference(int(x), m, s, pre) + 3 for x in v]


def test_widened_rescale_rejects_codes_out_of_range():
    t = _scalar_tensors(0.01, 255 * 49)
    op = IntOp("mean", "m", ["x"], "y", ActQ(0.1, 0, 0, 255), {"dims": (1,), "keepdim": False, "count": 49}, t)
    pre = int(t["pre_shift"])
    with pytest.raises(AccumulatorOverflowError, match="op m"):
        _rescale(torch.tensor([2 ** (31 - pre)]), op, "fixed")
    with pytest.raises(OverflowError):
        multiply_pre_shifted_reference(2 ** (31 - pre), 2**30, 0, pre)


# ---- each kind against exact rationals (hypothesis) ----------------------------------------


def _codes(g: torch.Generator, shape: tuple[int, ...], q: ActQ) -> torch.Tensor:
    return torch.randint(q.qmin, q.qmax + 1, shape, generator=g, dtype=torch.int32)


def _log_uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(2.0 ** (math.log2(lo) + (math.log2(hi) - math.log2(lo)) * float(torch.rand((), generator=g, dtype=torch.float64))))


def _mul_case(seed: int, widen: bool = True) -> tuple[int, int]:
    g = torch.Generator().manual_seed(seed)
    za, zb = (int(torch.randint(0, 256, (), generator=g)) for _ in range(2))
    xa, xb = ActQ(0.1, za, 0, 255), ActQ(0.1, zb, -128, 127) if seed % 2 else ActQ(0.1, zb, 0, 255)
    xb = ActQ(0.1, max(min(zb, xb.qmax), xb.qmin), xb.qmin, xb.qmax)
    real = _log_uniform(g, 2**-16, 0.5)
    qa, qb = _codes(g, (4, 8, 1, 1), xa), _codes(g, (4, 8, 6, 6), xb)
    t = _scalar_tensors(real, rescale_bounds("mul", [xa, xb])[0], widen=widen)
    op = IntOp("mul", "m", ["a", "b"], "y", WIDE, {"relu": False}, t)
    got = run_mul(qa, qb, op, xa, xb, "fixed")
    v = ((qa.to(torch.int64) - xa.zero_point) * (qb.to(torch.int64) - xb.zero_point)).reshape(-1).tolist()
    m, s, pre = _fixed(t)
    n = len(v)
    return _audit(v, [real] * n, got.reshape(-1).tolist(), [m] * n, [s] * n, pre, 0)


def _cat_case(seed: int, widen: bool = True) -> tuple[int, int]:
    g = torch.Generator().manual_seed(seed)
    k = 1 + seed % 3
    xqs = [ActQ(0.1, int(torch.randint(0, 256, (), generator=g)), 0, 255) for _ in range(k)]
    reals = [_log_uniform(g, 0.02, 4.0) for _ in range(k)]
    qs = [_codes(g, (3, 2 + i, 5, 5), q) for i, q in enumerate(xqs)]
    t: dict[str, torch.Tensor] = {}
    for i, (real, b) in enumerate(zip(reals, rescale_bounds("cat", xqs))):
        t.update(_scalar_tensors(real, b, f"_{i}", widen))
    op = IntOp("cat", "c", [str(i) for i in range(k)], "y", WIDE, {"axis": 1}, t)
    got = run_cat(qs, op, xqs, "fixed")
    bad = total = 0
    for i, (q, xq, real, part) in enumerate(zip(qs, xqs, reals, got.split([q.shape[1] for q in qs], 1))):
        v = (q.to(torch.int64) - xq.zero_point).reshape(-1).tolist()
        m, s, pre = _fixed(t, f"_{i}")
        b, n = _audit(v, [real] * len(v), part.reshape(-1).tolist(), [m] * len(v), [s] * len(v), pre, 0)
        bad, total = bad + b, total + n
    return bad, total


def _mean_case(seed: int, widen: bool = True) -> tuple[int, int]:
    g = torch.Generator().manual_seed(seed)
    dims = [(2, 3), (1,), (3,), (1, 2, 3)][seed % 4]
    shape = (48, 1 + int(torch.randint(1, 8, (), generator=g)), *(int(d) for d in torch.randint(1, 10, (2,), generator=g)))
    xq = ActQ(0.1, int(torch.randint(0, 256, (), generator=g)), 0, 255)
    count = math.prod(shape[d] for d in dims)
    # An output step near the input's, as an observed range of an average gives.
    real = 1.0 / (count * _log_uniform(g, 0.25, 4.0))
    q = _codes(g, shape, xq)
    t = _scalar_tensors(real, rescale_bounds("mean", [xq], count)[0], widen=widen)
    op = IntOp("mean", "m", ["x"], "y", WIDE, {"dims": dims, "keepdim": False, "count": count}, t)
    got = run_mean(q, op, xq, "fixed")
    v = (q.to(torch.int64) - xq.zero_point).sum(dim=dims).reshape(-1).tolist()
    m, s, pre = _fixed(t)
    return _audit(v, [real] * len(v), got.reshape(-1).tolist(), [m] * len(v), [s] * len(v), pre, 0)


def _adaptive_case(seed: int, widen: bool = True) -> tuple[int, int]:
    g = torch.Generator().manual_seed(seed)
    h, w = (int(d) for d in torch.randint(2, 13, (2,), generator=g))
    oh, ow = (int(d) for d in torch.randint(1, 8, (2,), generator=g))
    xq = ActQ(0.1, int(torch.randint(0, 256, (), generator=g)), 0, 255)
    count = adaptive_bin_counts(h, w, (oh, ow))
    real = 1.0 / (count.double() * _log_uniform(g, 0.25, 4.0))
    if widen:
        m, s, pre = pre_shift_multiplier(real, rescale_bounds("avgpool", [xq], int(count.max()))[0])
        extra = {"pre_shift": torch.tensor([pre], dtype=torch.int32)}
    else:
        (m, s), pre, extra = quantize_multiplier(real), 0, {}
    t = {"count": count, "multiplier": real, "fixed_multiplier": torch.from_numpy(m), "shift": torch.from_numpy(s), **extra}
    op = IntOp("avgpool", "p", ["x"], "y", WIDE, {"adaptive": True, "output_size": (oh, ow)}, t)
    q = _codes(g, (8, 3, h, w), xq)
    got = run_avgpool(q, op, xq, "fixed")
    sums = adaptive_bin_sums(q.to(torch.int64) - xq.zero_point, (oh, ow))

    def per_bin(a: np.ndarray) -> list:
        return np.broadcast_to(np.asarray(a), sums.shape).reshape(-1).tolist()

    return _audit(sums.reshape(-1).tolist(), per_bin(real.numpy()), got.reshape(-1).tolist(), per_bin(m), per_bin(s), pre, 0)


def _window_case(seed: int, widen: bool = True) -> tuple[int, int]:
    g = torch.Generator().manual_seed(seed)
    k = tuple(int(d) for d in torch.randint(1, 5, (2,), generator=g))
    stride = tuple(int(d) for d in torch.randint(1, 4, (2,), generator=g))
    padding = tuple(int(torch.randint(0, kk // 2 + 1, (), generator=g)) for kk in k)
    h, w = (kk + int(torch.randint(0, 8, (), generator=g)) for kk in k)
    xq = ActQ(0.1, int(torch.randint(0, 256, (), generator=g)), 0, 255)
    count = k[0] * k[1]
    real = 1.0 / (count * _log_uniform(g, 0.25, 4.0))
    if widen:
        m, s, pre = pre_shift_multiplier(real, rescale_bounds("avgpool", [xq], count)[0])
    else:
        (m, s), pre = quantize_multiplier(real), 0
    attrs = {"kernel": k, "stride": stride, "padding": padding, "count": count}
    attrs.update(multiplier=real, fixed_multiplier=int(m), shift=int(s))
    if widen:
        attrs["pre_shift"] = pre
    q = _codes(g, (16, 3, h, w), xq)
    got = run_avgpool(q, IntOp("avgpool", "p", ["x"], "y", WIDE, attrs), xq, "fixed")
    # Window sums from an integer im2col (padding adds real zeros).
    d = torch.nn.functional.pad(q.to(torch.int64) - xq.zero_point, (padding[1], padding[1], padding[0], padding[0]))
    win = d.unfold(2, k[0], stride[0]).unfold(3, k[1], stride[1]).sum(dim=(-1, -2))
    assert win.shape == got.shape
    n = win.numel()
    return _audit(win.reshape(-1).tolist(), [real] * n, got.reshape(-1).tolist(), [int(m)] * n, [int(s)] * n, pre, 0)


CASES = {"mul": _mul_case, "cat": _cat_case, "mean": _mean_case, "adaptive avgpool": _adaptive_case, "window avgpool": _window_case}


@pytest.mark.parametrize("kind", sorted(CASES))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_fixed_point_is_the_exact_rounding_but_near_ties(kind, seed):
    bad, total = CASES[kind](seed)
    assert bad <= max(1, total // 1000)


# Mismatch rates on 40 random cases per kind (16 k to 46 k outputs each), with the
# widening and without it (the form of files written before it): the widened path
# misses only near-ties; the unwidened one rounds twice. Measured (seeds 0..39):
# widened 0 everywhere; unwidened mul 1.2 %, cat 6.5 %, mean 8.1 %, adaptive pools
# 9.0 %, window pools 9.9 %.
UNWIDENED_AT_LEAST = {"mul": 0.005, "cat": 0.02, "mean": 0.03, "adaptive avgpool": 0.03, "window avgpool": 0.03}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_mismatch_rate_is_tiny_where_it_was_large(kind):
    rates = {}
    for widen in (True, False):
        counts = [CASES[kind](seed, widen) for seed in range(40)]
        rates[widen] = sum(b for b, _ in counts) / sum(n for _, n in counts)
    assert rates[True] < 0.001, rates
    assert rates[False] > UNWIDENED_AT_LEAST[kind], rates


# ---- convert, validate and the typed errors ----------------------------------------------


class _MulMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3)
        self.b = nn.Conv2d(2, 4, 3)
        self.win = nn.AvgPool2d(3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((2, 3))  # uneven bins on the 3×4 windows

    def forward(self, x):
        a, b = self.a(x), torch.relu(self.b(x))
        y = torch.cat([a * b, b], 1)
        return self.pool(self.win(y)) + y.mean((2, 3), keepdim=True)


def _converted(bits: int, rounding: str) -> IntModel:
    torch.manual_seed(0)
    q = prepare_qat(_MulMean(), QuantSpec(bits=min(bits, 8), granularity="channel"), QuantSpec(bits=bits, symmetric=False), "clipped")
    calibrate(q, [torch.randn(16, 2, 7, 9) for _ in range(2)])
    return convert(q.eval(), (2, 7, 9), rounding)


_FIXED_ATTRS = ("multiplier", "fixed_multiplier", "shift", "pre_shift")


def test_convert_stores_the_widening_and_compensated_shift():
    im = _converted(8, "fixed")
    qs = {op.output: op.out_q for op in im.ops}
    kinds = {op.kind for op in im.ops}
    assert {"mul", "cat", "mean", "avgpool"} <= kinds
    seen = 0
    for op in im.ops:
        suffixes = pre_shift_suffixes(op)
        count = int(op.tensors["count"].max()) if op.attrs.get("adaptive") else int(op.attrs.get("count", 1))
        bounds = rescale_bounds(op.kind, [qs[i] for i in op.inputs], count) if suffixes else []
        for suffix, bound in zip(suffixes, bounds):
            # The window pool's fixed-point form lives in scalar attrs.
            t = op.tensors
            if op.kind == "avgpool" and not op.attrs.get("adaptive"):
                t = {k: torch.tensor([op.attrs[k]], dtype=torch.float64 if k == "multiplier" else torch.int64) for k in _FIXED_ATTRS}
            pre = int(t[f"pre_shift{suffix}"])
            m0, s0 = quantize_multiplier(t[f"multiplier{suffix}"])
            assert torch.equal(t[f"fixed_multiplier{suffix}"], torch.from_numpy(m0).reshape(t[f"fixed_multiplier{suffix}"].shape))
            assert torch.equal(t[f"shift{suffix}"].reshape(-1), torch.from_numpy(s0).reshape(-1) - pre)
            assert bound * 2**pre <= 2**31 - 1 and pre >= 10  # 8-bit codes leave plenty of room
            seen += 1
    assert seen >= 6  # mul, two cat inputs, mean, window and adaptive pools
    # Saved and loaded, the widening stays (and the file validates).
    loaded = IntModel.from_dict(im.to_dict())
    assert all(a.tensors.keys() == b.tensors.keys() for a, b in zip(loaded.ops, im.ops))
    x = torch.randn(8, 2, 7, 9)
    assert torch.equal(run(loaded, x), run(im, x))


def test_sixteen_bit_products_refuse_fixed_point_but_not_float():
    # 16-bit centred codes multiply to nearly 2^32: no int32 holds them.
    with pytest.raises(UnsupportedLayerError, match="int32"):
        _converted(16, "fixed")
    im = _converted(16, "float")
    mul = next(op for op in im.ops if op.kind == "mul")
    assert int(mul.tensors["pre_shift"]) == 0
    im.rounding = "fixed"
    with pytest.raises(IntModelFormatError, match="leaves int32"):
        im.validate()


def test_validate_checks_the_widening_against_input_ranges():
    im = _converted(8, "fixed")
    mean = next(op for op in im.ops if op.kind == "mean")
    pre = int(mean.tensors["pre_shift"])
    mean.tensors["pre_shift"] = torch.tensor([pre + 1], dtype=torch.int32)
    with pytest.raises(IntModelFormatError, match="leaves int32"):
        im.validate()
    mean.tensors["pre_shift"] = torch.tensor([32], dtype=torch.int32)
    with pytest.raises(IntModelFormatError, match=r"\[0, 31\]"):
        im.validate()
    im.rounding = "float"  # float rounding never reads the fixed-point form
    im.validate()
