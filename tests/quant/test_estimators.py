import pytest
import torch

from qatlab.quant import ESTIMATORS, EMARange, QuantSpec, compute_qparams, estimate_range, fake_quantize, sqnr_db
from qatlab.quant.granularity import layout_for, to_rows


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("gran", ["tensor", "channel", "group:256", "group:8", "element"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_every_combination_works_or_says_why(estimator, gran, symmetric):
    x = torch.randn(16, 512)
    spec = QuantSpec(bits=8, granularity=gran, estimator=estimator, symmetric=symmetric)
    try:
        y = fake_quantize(x, spec)
    except ValueError as e:
        # Only the histogram method refuses, and only where a group is too small.
        assert estimator == "entropy" and "values per quantization group" in str(e)
        assert gran in ("group:8", "element")
        return
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    assert sqnr_db(x, y) > 20


def _range(x, **kw):
    spec = QuantSpec(**kw)
    return estimate_range(to_rows(x, layout_for(x, spec)), spec)


def test_meanstd_is_mean_plus_minus_alpha_sigma():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    lo, hi = _range(x, estimator="meanstd", alpha=2.0)
    mu, sd = 2.5, float(torch.tensor([1.0, 2, 3, 4]).std(correction=0))
    assert float(lo) == pytest.approx(mu - 2 * sd) and float(hi) == pytest.approx(mu + 2 * sd)
    # Symmetric scale uses r = max(|mu + a sd|, |mu - a sd|).
    qp = compute_qparams(x, QuantSpec(estimator="meanstd", alpha=2.0))
    assert float(qp.scale) == pytest.approx(max(abs(mu + 2 * sd), abs(mu - 2 * sd)) / 127, rel=1e-6)


def test_percentile_ignores_rare_outliers():
    x = torch.randn(1, 100_000, generator=torch.Generator().manual_seed(1))
    x[0, :5] = 1e3
    lo, hi = _range(x, estimator="percentile", percentile=99.9)
    assert 2.5 < float(hi) < 4.0 and float(lo) == -float(hi)
    lo, hi = _range(x, estimator="percentile", percentile=99.9, symmetric=False)
    assert -4.0 < float(lo) < -2.5 and 2.5 < float(hi) < 4.0


@pytest.mark.parametrize("estimator", ["mse", "entropy"])
def test_clip_search_beats_minmax_on_heavy_tails(estimator):
    g = torch.Generator().manual_seed(2)
    x = torch.distributions.Laplace(0.0, 1.0).sample((20_000,)) if False else None
    u = torch.rand(20_000, generator=g) - 0.5
    x = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1)
    x[:3] = torch.tensor([40.0, -40.0, 35.0])
    spec_mm = QuantSpec(bits=4)
    spec = QuantSpec(bits=4, estimator=estimator)
    lo, hi = _range(x, bits=4, estimator=estimator)
    assert float(hi) < 40.0  # clipped below the outliers
    assert sqnr_db(x, fake_quantize(x, spec)) > sqnr_db(x, fake_quantize(x, spec_mm)) + 3


def test_mse_never_worse_than_minmax_per_row():
    x = torch.randn(8, 300, generator=torch.Generator().manual_seed(3))
    a = fake_quantize(x, QuantSpec(bits=3, granularity="channel", estimator="mse"))
    b = fake_quantize(x, QuantSpec(bits=3, granularity="channel"))
    assert bool(((a - x).pow(2).sum(1) <= (b - x).pow(2).sum(1) + 1e-6).all())


def test_ema_range_moves_by_decay():
    ema = EMARange(decay=0.75)
    lo, hi = ema.update(torch.tensor([[-1.0, 1.0]]))
    assert (float(lo), float(hi)) == (-1.0, 1.0)
    lo, hi = ema.update(torch.tensor([[-5.0, 5.0]]))
    assert (float(lo), float(hi)) == (-2.0, 2.0)
    with pytest.raises(ValueError, match="ema_decay"):
        EMARange(decay=1.5)
