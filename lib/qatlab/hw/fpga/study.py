"""What a narrower accumulator costs: run the integer reference with every layer's
accumulator cut to ``bits`` (wrapping or saturating) and compare with exact arithmetic.

For each width: the fraction of accumulator values that left the width (per layer),
the fraction of final outputs that changed, how often the arg-max (the predicted class
of a classifier) stays the same, and the accuracy when labels are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from qatlab.hw.workload import Layer

from .accumulator import ACC_MODES, int_range
from .folding import LayerFolding, resolve_folding
from .reference import IntLayer, acc_is_signed, check_chain, layer_forward, validate_params, windows


@dataclass
class AccumulatorStudy:
    bits: int
    mode: str
    overflow_frac: dict[str, float] = field(default_factory=dict)  # per layer, exact values outside the width
    output_mismatch_frac: float = 0.0
    argmax_agreement: float = 1.0
    accuracy: float | None = None
    exact_accuracy: float | None = None

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def accumulator_study(
    layers: Sequence[Layer],
    params: Sequence[IntLayer],
    inputs: np.ndarray,
    bits: Sequence[int],
    *,
    mode: str = "wrap",
    folding: Mapping[str, LayerFolding] | None = None,
    labels: np.ndarray | None = None,
) -> list[AccumulatorStudy]:
    """One row per width in ``bits``. ``inputs`` [F, ...]: frames of the first layer's
    input codes. Saturation depends on the order of additions, hence on the SIMD of
    each layer: pass the ``folding`` (default PE = SIMD = 1)."""
    if mode not in ACC_MODES:
        raise ValueError(f"mode must be one of {', '.join(ACC_MODES)}, got {mode!r}")
    geoms = validate_params(layers, params)
    check_chain(geoms)
    folds = resolve_folding(geoms, folding if folding is not None else {"*": LayerFolding()})
    x = np.asarray(inputs).reshape(-1, geoms[0].in_elems)
    signed = [acc_is_signed(lay, p) for lay, p in zip(layers, params)]
    exact_last = []
    exact_accs: list[list[np.ndarray]] = []
    for frame in x:
        h, accs = frame, []
        for g, p in zip(geoms, params):
            accs.append(windows(h, g) @ np.asarray(p.weights, dtype=np.int64).T)
            h = layer_forward(h, g, p)
        exact_last.append(h)
        exact_accs.append(accs)
    exact = np.stack(exact_last)
    out = []
    for b in bits:
        of = {}
        for li, g in enumerate(geoms):
            lo, hi = int_range(b, signed[li])
            vals = np.concatenate([a[li].ravel() for a in exact_accs])
            of[g.name] = float(np.mean((vals < lo) | (vals > hi))) if vals.size else 0.0
        narrow_last = []
        for frame in x:
            h = frame
            for g, p, f, sg in zip(geoms, params, folds, signed):
                h = layer_forward(h, g, p, simd=f.simd, acc_bits=b, acc_mode=mode, acc_signed=sg)
            narrow_last.append(h)
        nar = np.stack(narrow_last)
        row = AccumulatorStudy(b, mode, of, float(np.mean(nar != exact)))
        ea, na = exact.reshape(len(x), -1).argmax(axis=1), nar.reshape(len(x), -1).argmax(axis=1)
        row.argmax_agreement = float(np.mean(ea == na))
        if labels is not None:
            lab = np.asarray(labels).reshape(-1)
            row.accuracy = float(np.mean(na == lab))
            row.exact_accuracy = float(np.mean(ea == lab))
        out.append(row)
    return out


def check_accumulators(
    layers: Sequence[Layer],
    params: Sequence[IntLayer],
    inputs: np.ndarray,
    acc_bits: Sequence[int] | int | None = None,
) -> list[tuple[int, int]]:
    """Run the integer model on ``inputs`` and check no exact accumulator leaves the
    design's widths (default: the widths :func:`.analytic.analyze` gives each layer);
    raise AccumulatorOverflowError naming the first layer that does. Returns each
    layer's observed accumulator range (min, max)."""
    from .accumulator import accumulator_bits, check_fits

    geoms = validate_params(layers, params)
    check_chain(geoms)
    if acc_bits is None:
        widths = [
            accumulator_bits(g.mw, lay.w_bits, lay.a_bits, weights=p.weights, a_signed=p.in_signed).used
            for g, lay, p in zip(geoms, layers, params)
        ]
    else:
        widths = list(acc_bits) if isinstance(acc_bits, (list, tuple)) else [int(acc_bits)] * len(layers)
    signed = [acc_is_signed(lay, p) for lay, p in zip(layers, params)]
    lo = [np.iinfo(np.int64).max] * len(layers)
    hi = [np.iinfo(np.int64).min] * len(layers)
    for frame in np.asarray(inputs).reshape(-1, geoms[0].in_elems):
        h = frame
        for li, (g, p) in enumerate(zip(geoms, params)):
            acc = windows(h, g) @ np.asarray(p.weights, dtype=np.int64).T
            check_fits(acc, widths[li], g.name, signed[li])
            if acc.size:
                lo[li], hi[li] = min(lo[li], int(acc.min())), max(hi[li], int(acc.max()))
            h = layer_forward(h, g, p)
    return list(zip(lo, hi))
