import math

import pandas as pd
import pytest
import torch
from torch import nn

from workbook.studies import accuracy, quantizers


def test_quantizer_table_on_captured_tensors():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    tensors = quantizers.capture_tensors(m, torch.randn(8, 1, 8, 8), max_act_values=500)
    assert set(tensors) == {"0.weight", "0.act", "3.weight", "3.act"}
    assert tensors["3.act"].shape[0] == 144  # channel-first: one row per input feature
    t = quantizers.error_table(
        tensors, bits=(8, 4), granularities=("tensor", "channel"), estimators=("minmax", "mse", "entropy"), mse_grid=8
    )
    ok = t[t.error.isna()]
    # More bits, less error; the half-range erratum costs about 6 dB on weights.
    s8 = ok[(ok.bits == 8) & (ok.scale_rule == "standard")].sqnr_db.mean()
    s4 = ok[(ok.bits == 4) & (ok.scale_rule == "standard")].sqnr_db.mean()
    assert s8 > s4 + 15
    hr = quantizers.halfrange_cost(t).loc[("weight", 8, "channel"), "loss_db"]
    assert 4.5 < hr < 7.5
    # The histogram estimator refuses small groups, and says so in the row.
    refused = t[t.error.notna()]
    assert len(refused) and refused.estimator.eq("entropy").all()
    assert not quantizers.summary(t).empty


def test_clip_ranges_cover_the_estimators():
    x = torch.randn(10_000)
    r = quantizers.clip_ranges(x, 4, symmetric=True)
    assert set(r) >= {"minmax", "mse", "percentile", "meanstd"}
    lo, hi = r["minmax"]
    assert lo <= float(x.min()) + 1e-6 and hi >= float(x.max()) * 0.99


def test_paper_table_means_and_stds_over_seeds():
    rows = []
    for seed, (fp, q8, q4) in enumerate([(0.90, 0.89, 0.85), (0.92, 0.91, 0.87)]):
        base = {"granularity": "channel", "estimator": "minmax", "seed": seed, "status": "ok", "int_agreement": 1.0}
        rows += [
            {**base, "method": "fp32", "ste": "lsq", "w_bits": 8, "a_bits": 8, "test_acc": fp, "int_acc": math.nan},
            {**base, "method": "qat", "ste": "lsq", "w_bits": 8, "a_bits": 8, "test_acc": q8, "int_acc": q8},
            {**base, "method": "qat", "ste": "lsq", "w_bits": 4, "a_bits": 4, "test_acc": q4, "int_acc": q4},
        ]
    rows.append(
        {"method": "qat", "ste": "pact", "w_bits": 2, "a_bits": 2, "status": "failed", "error": "Traceback...\nValueError: boom", "seed": 0}
    )
    df = pd.DataFrame(rows)
    t = accuracy.paper_table(df)
    q4 = t[(t.method == "qat") & (t.w_bits == 4)].iloc[0]
    assert q4.seeds == 2 and q4.test_acc == "86.00 ± 1.00" and q4["Δ vs FP32"] == pytest.approx(-5.0)
    assert accuracy.failures(df).error.tolist() == ["ValueError: boom"]
    assert accuracy.plot_acc_vs_bits(df) is not None
