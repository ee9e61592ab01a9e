"""Random small chained networks (layers, integer params, foldings, input frames) for
the property tests: every kind of layer the model knows — 3x3/2x2 windows with stride
1 or 2 (SWU), 1x1 stride 2 (DownSampler), 1x1 stride 1 and fully connected (no unit)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from qatlab.hw.fpga import IntLayer, LayerFolding, geometry
from qatlab.hw.fpga.accumulator import int_range
from qatlab.hw.workload import Layer


def _divisor(draw, n: int) -> int:
    return draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))


@st.composite
def networks(draw, max_layers: int = 3, max_side: int = 6):
    h = draw(st.integers(2, max_side))
    w = draw(st.integers(2, max_side))
    c = draw(st.integers(1, 4))
    n_layers = draw(st.integers(1, max_layers))
    layers: list[Layer] = []
    a_bits = draw(st.integers(2, 8))
    in_signed = draw(st.booleans())
    for i in range(n_layers):
        kinds = ["1x1", "fc"]
        if h >= 2 and w >= 2:
            kinds += ["2x2", "ds"]
        if h >= 3 and w >= 3:
            kinds += ["3x3"]
        kind = draw(st.sampled_from(kinds))
        nf = draw(st.integers(1, 6))
        w_bits = draw(st.integers(2, 8))
        name = f"l{i}"
        if kind in ("2x2", "3x3"):
            k = 2 if kind == "2x2" else 3
            s = draw(st.integers(1, 2))
            lay = Layer(name, h, w, k, k, c, nf, s, s, w_bits=w_bits, a_bits=a_bits)
        elif kind == "ds":
            lay = Layer(name, h, w, 1, 1, c, nf, 2, 2, w_bits=w_bits, a_bits=a_bits)
        elif kind == "1x1":
            lay = Layer(name, h, w, 1, 1, c, nf, 1, 1, w_bits=w_bits, a_bits=a_bits)
        else:  # fully connected on the flattened input, as a 1x1 conv on a 1x1 image
            lay = Layer(name, 1, 1, 1, 1, h * w * c, nf, w_bits=w_bits, a_bits=a_bits)
        layers.append(lay)
        h, w, c = lay.ofmap_h, lay.ofmap_w, nf
        a_bits = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    params = []
    for i, lay in enumerate(layers):
        g = geometry(lay)
        wl, wh = int_range(lay.w_bits, True)
        weights = rng.integers(wl, wh + 1, size=(g.mh, g.mw))
        bias = rng.integers(-64, 65, size=g.mh) if draw(st.booleans()) else None
        sig = in_signed if i == 0 else False
        last = i == len(layers) - 1
        if last and draw(st.booleans()):
            params.append(IntLayer(weights, bias, None, in_signed=sig))
            continue
        out_bits = layers[i + 1].a_bits if not last else draw(st.integers(2, 8))
        lo, hi = int_range(out_bits, False)
        # scale so the codes spread over the output range (some clamp at both ends)
        span = max(1, int(np.abs(weights).sum(axis=1).max()) * (1 << lay.a_bits))
        mult = rng.uniform(0.5, 3.0, size=g.mh) * (hi + 1) / span
        zp = int(rng.integers(0, max(1, hi // 4) + 1))
        params.append(IntLayer(weights, bias, mult, zp, lo, hi, in_signed=sig))
    folds = {}
    for lay in layers:
        g = geometry(lay)
        ss = _divisor(draw, g.channels) if g.unit != "none" and draw(st.booleans()) else None
        folds[lay.name] = LayerFolding(_divisor(draw, g.mh), _divisor(draw, g.mw), ss)
    n_frames = draw(st.integers(4, 5))
    lo, hi = int_range(layers[0].a_bits, in_signed)
    x = rng.integers(lo, hi + 1, size=(n_frames, geometry(layers[0]).in_elems))
    return layers, params, folds, x
