"""Search estimators in QAT observers: searched on a schedule, tracked by min/max between.

The reference is the plain observer that runs the estimator on every observation
(``refresh_every=1``); the scheduled one must equal it on every search step, scale its
last search's clip fractions by the batch's largest magnitude in between, and agree
exactly with it wherever the data is a power-of-two rescaling of the searched batch
(the search estimators are scale-equivariant, and such a rescaling is exact in floats).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.nn.fake_quant import DEFAULT_REFRESH_EVERY, SEARCH_ESTIMATORS, FakeQuant, set_refresh_every
from qatlab.quant import QuantSpec, estimate_range, layout_for, to_rows
from qatlab.quant import estimators as est_mod

SPECS = {
    "mse_act": (QuantSpec(bits=4, symmetric=False, estimator="mse"), "act"),
    "mse_weight_channel": (QuantSpec(bits=4, granularity="channel", estimator="mse"), "weight"),
    "percentile_act": (QuantSpec(bits=8, symmetric=False, estimator="percentile"), "act"),
    "percentile_weight_sym": (QuantSpec(bits=8, granularity="channel", estimator="percentile"), "weight"),
    "entropy_act": (QuantSpec(bits=8, symmetric=False, estimator="entropy"), "act"),
}


def _batches(seed: int, n: int, shape: tuple[int, ...] = (6, 64)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (1 + 0.5 * torch.rand(1, generator=g)) + 0.3 for _ in range(n)]


def _reference_ranges(spec: QuantSpec, role: str, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The observer's bookkeeping written out by hand: the estimator on every batch, then
    replace (weights) or the EMA of per-batch ranges (activations)."""
    lo = hi = None
    for x in batches:
        blo, bhi = estimate_range(to_rows(x, layout_for(x, spec)), spec)
        if role == "weight" or lo is None:
            lo, hi = blo, bhi
        else:
            d = spec.ema_decay
            lo, hi = d * lo + (1 - d) * blo, d * hi + (1 - d) * bhi
    assert lo is not None and hi is not None
    return lo, hi


def _observer(spec: QuantSpec, role: str, refresh_every: int) -> FakeQuant:
    fq = FakeQuant(spec, "clipped", role)
    fq.enabled = False  # observe only: the range bookkeeping is what is under test
    fq.refresh_every = refresh_every
    return fq


@pytest.mark.parametrize("case", sorted(SPECS))
def test_refresh_every_one_is_the_reference(case: str) -> None:
    spec, role = SPECS[case]
    batches = _batches(0, 5)
    fq = _observer(spec, role, 1)
    for x in batches:
        fq(x)
    lo, hi = _reference_ranges(spec, role, batches)
    torch.testing.assert_close(fq.lo, lo, rtol=0, atol=0)
    torch.testing.assert_close(fq.hi, hi, rtol=0, atol=0)


@pytest.mark.parametrize("case", sorted(SPECS))
def test_calibration_always_searches(case: str) -> None:
    spec, role = SPECS[case]
    batches = _batches(1, 4)
    fq = _observer(spec, role, 0)  # 0: never outside calibration
    fq.calibrating = True
    for x in batches:
        fq(x)
    lo, hi = _reference_ranges(spec, role, batches)
    torch.testing.assert_close(fq.lo, lo, rtol=0, atol=0)
    torch.testing.assert_close(fq.hi, hi, rtol=0, atol=0)


@pytest.mark.parametrize("case", sorted(SPECS))
def test_between_searches_the_fractions_scale_the_magnitude(case: str) -> None:
    spec, role = SPECS[case]
    b0, b1 = _batches(2, 2)
    fq = _observer(spec, role, 4)
    fq(b0)  # searches: no fractions yet
    rows0 = to_rows(b0, layout_for(b0, spec))
    lo0, hi0 = estimate_range(rows0, spec)
    mag0 = rows0.abs().amax(1)
    fq.lo, fq.hi = torch.empty(0), torch.empty(0)  # forget the EMA: look at b1's own range
    fq(b1)
    mag1 = to_rows(b1, layout_for(b1, spec)).abs().amax(1)
    torch.testing.assert_close(fq.lo, lo0 / mag0 * mag1)
    torch.testing.assert_close(fq.hi, hi0 / mag0 * mag1)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    exps=st.lists(st.integers(-3, 3), min_size=1, max_size=6),
    case=st.sampled_from(["mse_act", "mse_weight_channel", "percentile_act", "percentile_weight_sym"]),
)
def test_rescaled_data_tracks_exactly(seed: int, exps: list[int], case: str) -> None:
    """Batches 2^k · x after a search on x: tracking gives what searching would."""
    spec, role = SPECS[case]
    (x,) = _batches(seed, 1)
    batches = [x] + [x * 2.0**k for k in exps]
    fq = _observer(spec, role, 1000)
    for b in batches:
        fq(b)
    assert fq._since_search == len(exps)  # no search after the first
    lo, hi = _reference_ranges(spec, role, batches)
    torch.testing.assert_close(fq.lo, lo, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fq.hi, hi, rtol=1e-6, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), steps=st.integers(1, 40), every=st.integers(0, 9))
def test_search_count_follows_the_schedule(seed: int, steps: int, every: int) -> None:
    spec = QuantSpec(bits=4, symmetric=False, estimator="mse")
    calls: list[int] = []
    real = est_mod.ESTIMATOR_FNS["mse"]

    def counting(rows: torch.Tensor, s: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return real(rows, s)

    est_mod.ESTIMATOR_FNS["mse"] = counting
    try:
        fq = _observer(spec, "act", every)
        fq.calibrating = True
        fq(torch.randn(4, 8, generator=torch.Generator().manual_seed(seed)))
        fq.calibrating = False
        assert len(calls) == 1
        for x in _batches(seed, steps):
            fq(x)
    finally:
        est_mod.ESTIMATOR_FNS["mse"] = real
    expected = 0 if every == 0 else steps // every  # every n-th observation after calibration
    assert len(calls) - 1 == expected


def test_all_zero_rows_keep_a_zero_range() -> None:
    spec = QuantSpec(bits=8, granularity="channel", estimator="mse")
    fq = _observer(spec, "weight", 8)
    w = torch.randn(3, 5)
    w[1] = 0
    fq(w)
    fq(w * 2)
    assert fq.lo[1] == 0 and fq.hi[1] == 0
    assert torch.isfinite(fq.clip_frac).all()


def test_cheap_estimators_ignore_the_schedule() -> None:
    for est in ("minmax", "ema", "meanstd"):
        assert est not in SEARCH_ESTIMATORS
        fq = _observer(QuantSpec(bits=8, estimator=est), "weight", 4)
        x = torch.randn(2, 9)
        fq(x)
        lo, hi = estimate_range(to_rows(x, layout_for(x, fq.spec)), fq.spec)
        assert torch.equal(fq.lo, lo) and torch.equal(fq.hi, hi)
        assert fq.clip_frac.numel() == 0


def test_a_new_row_count_searches_again() -> None:
    spec = QuantSpec(bits=4, granularity="channel", estimator="mse")
    fq = _observer(spec, "weight", 100)
    fq(torch.randn(3, 7))
    w = torch.randn(5, 7)
    fq(w)
    lo, hi = estimate_range(to_rows(w, layout_for(w, spec)), spec)
    assert torch.equal(fq.lo, lo) and torch.equal(fq.hi, hi)


def test_state_dict_is_unchanged_and_loading_forgets_the_fractions() -> None:
    spec = QuantSpec(bits=4, symmetric=False, estimator="mse")
    fq = _observer(spec, "act", 8)
    fq(torch.randn(4, 16))
    assert "clip_frac" not in fq.state_dict()
    fresh = _observer(spec, "act", 8)
    fresh.clip_frac = torch.ones(2, 1)
    fresh.load_state_dict(fq.state_dict())
    assert fresh.clip_frac.numel() == 0 and torch.equal(fresh.lo, fq.lo)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8", None])
def test_bad_refresh_every_is_refused(bad: object) -> None:
    fq = FakeQuant(QuantSpec(bits=8, estimator="mse"))
    with pytest.raises(ValueError, match="refresh_every"):
        fq.refresh_every = bad  # type: ignore[assignment]
    with pytest.raises(ValueError, match="refresh_every"):
        set_refresh_every(fq, bad)  # type: ignore[arg-type]


def test_set_refresh_every_reaches_every_quantizer() -> None:
    model = torch.nn.ModuleDict({"a": FakeQuant(QuantSpec(bits=8)), "b": FakeQuant(QuantSpec(bits=4, estimator="mse"))})
    assert all(m.refresh_every == DEFAULT_REFRESH_EVERY for m in model.values())
    set_refresh_every(model, 3)
    assert all(m.refresh_every == 3 for m in model.values())
