"""The accuracy cost of a narrower accumulator."""

from __future__ import annotations

import numpy as np

from qatlab.hw.fpga import IntLayer, LayerFolding, accumulator_bits, accumulator_study
from qatlab.hw.workload import Layer


def test_narrow_accumulator_costs_only_below_the_bound():
    rng = np.random.default_rng(0)
    lay = [Layer("c", 6, 6, 3, 3, 4, 8), Layer("fc", 1, 1, 1, 1, 128, 10)]
    w1 = rng.integers(-128, 128, size=(8, 36))
    w2 = rng.integers(-128, 128, size=(10, 128))
    params = [IntLayer(w1, None, np.full(8, 2e-4), 0, 0, 255), IntLayer(w2)]
    x = rng.integers(0, 256, size=(40, 144))
    need = max(accumulator_bits(36, 8, 8, weights=w1).used, accumulator_bits(128, 8, 8, weights=w2).used)
    labels = np.stack([np.argmax(rng.integers(0, 10, 10)) for _ in range(40)])
    rows = accumulator_study(
        lay, params, x, [need, need - 6, 12], mode="saturate", folding={"c": LayerFolding(1, 4), "fc": LayerFolding(1, 8)}, labels=labels
    )
    full, mid, narrow = rows
    assert full.output_mismatch_frac == 0 and full.argmax_agreement == 1 and max(full.overflow_frac.values()) == 0
    assert narrow.output_mismatch_frac > 0 and max(narrow.overflow_frac.values()) > 0
    assert narrow.argmax_agreement <= full.argmax_agreement
    assert full.accuracy == full.exact_accuracy
    wrap = accumulator_study(lay, params, x, [12], mode="wrap")[0]
    assert wrap.output_mismatch_frac > 0


def test_check_accumulators_flags_overflow():
    import pytest

    from qatlab.hw.fpga import AccumulatorOverflowError, check_accumulators

    rng = np.random.default_rng(1)
    lay = [Layer("fc", 1, 1, 1, 1, 64, 4)]
    w = rng.integers(-128, 128, size=(4, 64))
    x = rng.integers(0, 256, size=(20, 64))
    ((lo, hi),) = check_accumulators(lay, [IntLayer(w)], x)  # the tight width always holds
    assert lo < 0 < hi
    need = max((-lo - 1).bit_length(), hi.bit_length()) + 1  # two's complement width of [lo, hi]
    check_accumulators(lay, [IntLayer(w)], x, acc_bits=need)
    with pytest.raises(AccumulatorOverflowError, match="layer 'fc'"):
        check_accumulators(lay, [IntLayer(w)], x, acc_bits=need - 1)
