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
    rows = accumulator_study(lay, params, x, [need, need - 6, 12], mode="saturate",
                             folding={"c": LayerFolding(1, 4), "fc": LayerFolding(1, 8)}, labels=labels)
    full, mid, narrow = rows
    assert full.output_mismatch_frac == 0 and full.argmax_agreement == 1 and max(full.overflow_frac.values()) == 0
    assert narrow.output_mismatch_frac > 0 and max(narrow.overflow_frac.values()) > 0
    assert narrow.argmax_agreement <= full.argmax_agreement
    assert full.accuracy == full.exact_accuracy
    wrap = accumulator_study(lay, params, x, [12], mode="wrap")[0]
    assert wrap.output_mismatch_frac > 0
