"""The fused ``mse`` range search (``qatlab_mse_search``) against ``estimators.mse``.

The kernel evaluates the reference's candidates with the reference's qparams and fake
quantization bit for bit; only its float64 error sums are added in another order. So:

* the chosen range is one of the reference's candidates, and where the reference's
  minimum is unique beyond summation noise, it is the reference's range exactly;
* where two candidates' errors differ by no more than that noise, either may win, so
  the test holds the chosen candidate's *reference* error to the reference minimum
  within 1e-12 relative (:func:`assert_choice_optimal`; a test below shows that this
  check rejects a candidate that is not optimal);
* every candidate's kernel error matches the reference's within the reordering bound;
* the result does not depend on the thread count (the same bits for 1 to 4 threads).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qatlab.nn import fake_quant as fq_mod
from qatlab.nn import fused
from qatlab.nn.fake_quant import search_range
from qatlab.nn.fused.ops import ASYMMETRIC, SYMMETRIC_SIGNED, SYMMETRIC_UNSIGNED, ObservePlan, mse_search_fused
from qatlab.quant import QuantSpec
from qatlab.quant import estimators as est_mod
from qatlab.quant.affine import fake_quantize_rows
from qatlab.quant.estimators import mse, row_minmax
from qatlab.quant.granularity import Layout
from qatlab.quant.qparams import qparams_from_range, scale_divisor
from tests.nn.conftest import NEEDS_KERNELS

pytestmark = NEEDS_KERNELS

REL_TOL = 1e-12
_FMAX = torch.finfo(torch.float32).max


def _plan(rows: torch.Tensor, spec: QuantSpec) -> ObservePlan:
    scheme = ASYMMETRIC if not spec.symmetric else (SYMMETRIC_SIGNED if spec.is_signed else SYMMETRIC_UNSIGNED)
    return ObservePlan(rows.shape, 0, spec.qmin, spec.qmax, scale_divisor(spec), scheme)


def kernel_search(rows: torch.Tensor, spec: QuantSpec, nthreads: int | None = None) -> fused.ops.MSESearch:
    lo0, hi0 = row_minmax(rows)
    return mse_search_fused(rows, lo0.contiguous(), hi0.contiguous(), spec.mse_grid, _plan(rows, spec), nthreads, all_errors=True)


def reference_table(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``estimators.mse``'s candidates and their errors, [P, grid] each, by its own ops."""
    lo0, hi0 = row_minmax(rows)
    los, his, errs = [], [], []
    for k in range(1, spec.mse_grid + 1):
        f = k / spec.mse_grid
        lo, hi = lo0 * f, hi0 * f
        qp = qparams_from_range(lo, hi, spec, Layout("tensor"))
        err = (fake_quantize_rows(rows, qp.scale, qp.zero_point, qp.qmin, qp.qmax) - rows).double().pow(2).sum(1)
        los.append(lo)
        his.append(hi)
        errs.append(err)
    return torch.stack(los, 1), torch.stack(his, 1), torch.stack(errs, 1)


def assert_choice_optimal(rows: torch.Tensor, spec: QuantSpec, lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Each row's (lo, hi) is a candidate whose reference error is the reference minimum
    within ``REL_TOL`` relative (exactly 0 where the minimum is 0)."""
    c_lo, c_hi, errs = reference_table(rows, spec)
    for r in range(rows.shape[0]):
        match = (c_lo[r] == lo[r]) & (c_hi[r] == hi[r])
        assert bool(match.any()), f"row {r}: ({lo[r].item()!r}, {hi[r].item()!r}) is none of the candidate ranges"
        chosen = errs[r][match].min().item()
        best = errs[r].min().item()
        if not math.isfinite(best):  # every error overflows: the reference keeps the full range
            assert bool(match[-1]), f"row {r}: no finite error, yet ({lo[r].item()!r}, {hi[r].item()!r}) is not the full range"
            continue
        # One-sided: the chosen error may not exceed the minimum by more than summation noise.
        assert chosen - best <= REL_TOL * best, f"row {r}: chosen error {chosen!r} > minimum {best!r} beyond {REL_TOL} relative"


def _spec(draw: st.DrawFn) -> QuantSpec:
    bits = draw(st.integers(2, 8))
    symmetric = draw(st.booleans())
    signed = draw(st.booleans()) if symmetric else None
    narrow = bool(symmetric and signed and draw(st.booleans()))
    rule = draw(st.sampled_from(["standard", "standard", "halfrange"]))
    grid = draw(st.sampled_from([100, 100, 7, 2]))
    return QuantSpec(bits=bits, symmetric=symmetric, signed=signed, narrow_range=narrow, scale_rule=rule, estimator="mse", mse_grid=grid)


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, QuantSpec]:
    spec = _spec(draw)
    per_channel = draw(st.booleans())
    p = draw(st.integers(2, 6)) if per_channel else 1
    n = draw(st.integers(1, 3000))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["normal", "skewed", "relu", "constant", "mixed_constant", "small_ints"]))
    if kind == "normal":
        x = torch.randn(p, n, generator=g)
    elif kind == "skewed":  # heavy right tail: the search clips most of the range
        x = torch.exp(2.0 * torch.randn(p, n, generator=g)) - 0.5
    elif kind == "relu":
        x = torch.randn(p, n, generator=g).clamp(min=0)
    elif kind == "constant":
        x = torch.full((p, n), draw(st.sampled_from([0.0, 1.0, -3.5, 0.1])))
    elif kind == "mixed_constant":  # some rows constant (zero or not), the others random
        x = torch.randn(p, n, generator=g)
        x[0] = 0.0
        if p > 1:
            x[-1] = 2.5
    else:  # values on a coarse lattice: many candidates tie exactly
        x = torch.randint(-4, 5, (p, n), generator=g).float()
    magnitude = draw(st.sampled_from([1.0, 1.0, 1e-30, 1e-38, 1e30, 1e36]))
    # Huge magnitudes may overflow float32: keep them at its edge (the search needs finite rows).
    return torch.nan_to_num((x * magnitude).float(), posinf=_FMAX, neginf=-_FMAX), spec


@given(cases())
def test_chosen_range_is_the_references_optimum(case: tuple[torch.Tensor, QuantSpec]) -> None:
    rows, spec = case
    found = kernel_search(rows, spec)
    ref_lo, ref_hi = mse(rows, spec)
    assert_choice_optimal(rows, spec, found.lo, found.hi)
    c_lo, c_hi, errs = reference_table(rows, spec)
    # Every candidate's error: the same terms summed in another order.
    n = rows.shape[1]
    bound = 4 * n * 2.0**-53
    assert found.errs is not None
    # (equal also covers errors that overflow to inf on both sides, near float32's limit)
    diff = (found.errs - errs).abs()
    close = (found.errs == errs) | (diff <= bound * errs.abs())
    assert bool(close.all()), f"errors differ: kernel {found.errs[~close][:3].tolist()}, reference {errs[~close][:3].tolist()}"
    # Where the reference's minimum is unique beyond that noise, the ranges are equal bit for bit.
    best = errs.min(1).values
    near = (errs <= best[:, None] * (1 + 2 * bound)).sum(1)
    distinct = torch.tensor(
        [
            len({(a, b) for a, b, e in zip(c_lo[r].tolist(), c_hi[r].tolist(), errs[r].tolist()) if e <= best[r] * (1 + 2 * bound)})
            for r in range(rows.shape[0])
        ]
    )
    unique = (near == 1) | (distinct == 1)
    assert torch.equal(found.lo[unique], ref_lo[unique]) and torch.equal(found.hi[unique], ref_hi[unique])


def test_check_rejects_a_candidate_that_is_not_optimal() -> None:
    """:func:`assert_choice_optimal` fails on the second-best candidate when it is worse
    than the best by more than ``REL_TOL`` (so the test above can fail on a wrong kernel)."""
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(3, 2000, generator=g)
    spec = QuantSpec(bits=4, symmetric=True, estimator="mse")
    c_lo, c_hi, errs = reference_table(rows, spec)
    order = errs.argsort(1)
    best_i, second_i = order[:, 0], order[:, 1]
    rel = (errs.gather(1, second_i[:, None]) / errs.gather(1, best_i[:, None]) - 1).squeeze(1)
    assert bool((rel > 1e-9).all()), "test data must separate the two best candidates"
    rng = torch.arange(3)
    assert_choice_optimal(rows, spec, c_lo[rng, best_i], c_hi[rng, best_i])
    for r in range(3):
        lo, hi = c_lo[rng, best_i].clone(), c_hi[rng, best_i].clone()
        lo[r], hi[r] = c_lo[r, second_i[r]], c_hi[r, second_i[r]]
        with pytest.raises(AssertionError, match="beyond"):
            assert_choice_optimal(rows, spec, lo, hi)
    # A range that is no candidate at all (a wrong scaling of the grid) is caught as well.
    with pytest.raises(AssertionError, match="none of the candidate"):
        assert_choice_optimal(rows, spec, c_lo[rng, best_i] * 1.001, c_hi[rng, best_i] * 1.001)


def test_large_tensor_per_tensor_and_thread_count_invariance() -> None:
    """Rows of several chunks (the unit of parallel work): the same bits for 1..4 threads."""
    g = torch.Generator().manual_seed(11)
    rows = torch.randn(3, 150_000, generator=g).clamp(min=-0.5) ** 3
    spec = QuantSpec(bits=6, symmetric=False, estimator="mse")
    runs = [kernel_search(rows, spec, nthreads=t) for t in (1, 2, 3, 4)]
    for other in runs[1:]:
        assert torch.equal(other.lo, runs[0].lo) and torch.equal(other.hi, runs[0].hi)
        assert torch.equal(other.err, runs[0].err)
        assert other.errs is not None and runs[0].errs is not None
        assert torch.equal(other.errs, runs[0].errs)
    assert_choice_optimal(rows, spec, runs[0].lo, runs[0].hi)


def test_search_range_uses_the_kernel_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(5)
    rows = torch.randn(4, 300, generator=g)
    spec = QuantSpec(bits=4, symmetric=True, granularity="channel", estimator="mse")
    calls: list[int] = []
    real = fq_mod.mse_search_fused

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fq_mod, "mse_search_fused", spy)
    lo, hi = search_range(rows, spec)
    assert calls == [1]
    assert_choice_optimal(rows, spec, lo, hi)
    # The reference where the kernels are switched off, and for tensors they do not take.
    with fused.fused_disabled():
        assert [torch.equal(a, b) for a, b in zip(search_range(rows, spec), mse(rows, spec))] == [True, True]
    monkeypatch.setenv("QATLAB_FUSED", "0")
    search_range(rows, spec)
    monkeypatch.delenv("QATLAB_FUSED")
    lo64, hi64 = search_range(rows.double(), spec)
    assert calls == [1]
    # An estimator registered over the reference under the same name is honoured.
    seen: list[int] = []
    monkeypatch.setitem(est_mod.ESTIMATOR_FNS, "mse", lambda r, s: (seen.append(1), mse(r, s))[1])
    search_range(rows, spec)
    assert calls == [1] and seen == [1]
    assert lo64.dtype == torch.float32
    assert torch.equal(lo64, mse(rows.double(), spec)[0].float())


def test_fake_quant_observer_runs_the_fused_search() -> None:
    """A calibrating ``mse`` quantizer gets the same range on both paths."""
    from qatlab.nn.fake_quant import FakeQuant

    g = torch.Generator().manual_seed(8)
    x = torch.randn(8, 16, 5, 5, generator=g)
    spec = QuantSpec(bits=5, symmetric=False, estimator="mse")
    fast, slow = FakeQuant(spec, role="act"), FakeQuant(spec, role="act")
    fast.calibrating = slow.calibrating = True
    y_fast = fast(x)
    with fused.fused_disabled():
        y_slow = slow(x)
    assert torch.equal(fast.lo, slow.lo) and torch.equal(fast.hi, slow.hi)
    assert torch.equal(y_fast, y_slow)


def test_bad_input() -> None:
    spec = QuantSpec(bits=8, estimator="mse")
    rows = torch.randn(2, 10)
    rows[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        search_range(rows, spec)
    good = torch.randn(2, 10)
    lo, hi = row_minmax(good)
    with pytest.raises(TypeError, match="float32"):
        mse_search_fused(good.double(), lo, hi, 100, _plan(good, spec))
    with pytest.raises(ValueError, match="grid"):
        mse_search_fused(good, lo, hi, 0, _plan(good, spec))
    with pytest.raises(ValueError, match="lo"):
        mse_search_fused(good, lo[:1], hi, 100, _plan(good, spec))
    with pytest.raises(ValueError, match="nthreads"):
        mse_search_fused(good, lo, hi, 100, _plan(good, spec), nthreads=0)


def test_errors_that_overflow_near_float32s_limit() -> None:
    """Values near float32's limit: some candidates' fake-quantized values overflow to
    ±inf, so their errors are inf on both paths, and the choice still agrees."""
    g = torch.Generator().manual_seed(2)
    top = torch.finfo(torch.float32).max
    rows = torch.cat([torch.tensor([[-top, top]]), (torch.rand(1, 500, generator=g) * 2 - 1) * top], 1)
    rows = torch.cat([rows, torch.full_like(rows, 3.0e38), rows * 0.95])
    for spec in (
        QuantSpec(bits=8, symmetric=False, estimator="mse"),
        QuantSpec(bits=3, symmetric=True, estimator="mse"),
        QuantSpec(bits=2, symmetric=False, estimator="mse"),
    ):
        found = kernel_search(rows, spec)
        assert found.errs is not None
        _, _, errs = reference_table(rows, spec)
        assert bool(torch.isinf(errs).any()), "the data must make some errors overflow"
        assert bool(((found.errs == errs) | ((found.errs - errs).abs() <= 1e-12 * errs)).all())
        assert_choice_optimal(rows, spec, found.lo, found.hi)
        ref_lo, ref_hi = mse(rows, spec)
        assert torch.equal(found.lo, ref_lo) and torch.equal(found.hi, ref_hi)


# ---- pruned search: candidates bounded from a histogram pass, the survivors evaluated -------


def _search(rows: torch.Tensor, spec: QuantSpec, min_prune: int, nthreads: int | None = None) -> fused.ops.MSESearch:
    lo0, hi0 = row_minmax(rows)
    return mse_search_fused(rows, lo0.contiguous(), hi0.contiguous(), spec.mse_grid, _plan(rows, spec), nthreads, min_prune=min_prune)


def assert_same_choice(full: fused.ops.MSESearch, pruned: fused.ops.MSESearch) -> None:
    assert torch.equal(pruned.lo, full.lo) and torch.equal(pruned.hi, full.hi), (
        f"pruned chose {pruned.lo.tolist()}, {pruned.hi.tolist()}; full {full.lo.tolist()}, {full.hi.tolist()}"
    )
    # The winners' errors are the very same sums, not just close.
    assert torch.equal(pruned.err, full.err)


@given(cases())
def test_pruned_search_chooses_what_the_full_search_chooses(case: tuple[torch.Tensor, QuantSpec]) -> None:
    """Every row pruned (``min_prune=1``) against every candidate evaluated, bit for bit:
    lattice values (exact ties, the first must win), constant rows, tiny and huge
    magnitudes, 2..8 bits, grids of 2..100."""
    rows, spec = case
    full = _search(rows, spec, min_prune=0)
    pruned = _search(rows, spec, min_prune=1)
    assert_same_choice(full, pruned)
    assert bool((full.evaluated == spec.mse_grid).all())
    assert bool((pruned.evaluated >= 1).all()) and bool((pruned.evaluated <= spec.mse_grid).all())


@pytest.mark.parametrize("kind", ["normal", "hardswish", "skewed", "lattice"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pruned_search_on_long_rows(kind: str, bits: int) -> None:
    """Rows of an activation's size take the pruned path by default, choose what the full
    search chooses, and evaluate only a few of the 100 candidates in full."""
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(2, 60_000, generator=g)
    if kind == "hardswish":
        x = torch.nn.functional.hardswish(3 * x)
    elif kind == "skewed":
        x = torch.exp(2 * x)
    elif kind == "lattice":
        x = torch.randint(-20, 21, (2, 60_000), generator=g).float() / 8
    spec = QuantSpec(bits=bits, symmetric=False, estimator="mse")
    full = _search(x, spec, min_prune=0)
    pruned = _search(x, spec, min_prune=fused.ops.PRUNE_MIN_VALUES)
    assert_same_choice(full, pruned)
    assert int(pruned.evaluated.max()) <= 40, f"{pruned.evaluated.tolist()} of 100 candidates evaluated"
    for t in (2, 3):
        assert_same_choice(full, _search(x, spec, min_prune=fused.ops.PRUNE_MIN_VALUES, nthreads=t))


def test_all_errors_and_near_float_max_evaluate_every_candidate() -> None:
    x = torch.randn(1, 20_000, generator=torch.Generator().manual_seed(1))
    spec = QuantSpec(bits=4, estimator="mse")
    lo0, hi0 = row_minmax(x)
    table = mse_search_fused(x, lo0, hi0, 100, _plan(x, spec), all_errors=True, min_prune=1)
    assert table.errs is not None and int(table.evaluated[0]) == 100
    # Where a term's float32 subtraction may overflow, no bound holds: every candidate runs.
    huge = (x * 3e37).clamp(-_FMAX, _FMAX)
    assert int(_search(huge, spec, min_prune=1).evaluated[0]) == 100
    with pytest.raises(ValueError, match="min_prune"):
        mse_search_fused(x, lo0, hi0, 100, _plan(x, spec), min_prune=-1)
