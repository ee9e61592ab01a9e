"""Activation bits in the sensitivities: the Hessian's activation term against the exact
trace times the estimator's error, the noise method's estimator, and method versions
in the cache key."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qatlab.mixed import MixedPrecisionError, SensitivityInput, layer_sensitivity, register
from qatlab.mixed.capture import layer_inputs
from qatlab.mixed.registry import VERSIONS
from qatlab.mixed.sens_cache import cache_key
from qatlab.mixed.sens_types import act_spec_at
from qatlab.quant import fake_quantize

from .conftest import A, W, data

MSE = A.with_(estimator="mse", mse_grid=20)  # a coarse search keeps the tests fast


def test_hessian_prices_every_activation_width(lenet_setup, one_thread) -> None:
    m, q, space, _ = lenet_setup
    table = layer_sensitivity("hessian", SensitivityInput(m, q, space, W, A, "lsq", data(), {"samples": 2}), use_cache=False)
    for s in space.layers:
        row = table[s.name]
        for w in (2, 4, 8):
            # ReLU/max-pool downstream: the Hessian in each input is positive semidefinite,
            # so its term is > 0 and grows as the activation error does.
            assert row[(w, 2)] > row[(w, 4)] > row[(w, 8)], (s.name, w)


def test_hessian_activation_term_is_exact_trace_times_estimator_error(lenet_setup, one_thread) -> None:
    m, q, space, _ = lenet_setup
    a_spec = MSE  # clips: its 2-bit error is not minmax's
    d = data()
    n = 4
    inp = SensitivityInput(m, q, space, W, a_spec, "lsq", d, {"samples": 24, "batch": n})
    table = layer_sensitivity("hessian", inp, use_cache=False)
    fc = m.get_submodule("11")
    x, y = d.calib[0][0][:n], d.calib[0][1][:n]
    h = layer_inputs(m, {"11": fc}, [x])["11"]
    exact = float(
        torch.autograd.functional.hessian(lambda t: F.cross_entropy(fc(t), y), h, vectorize=True).reshape(h.numel(), -1).diagonal().sum()
    )

    def err(spec) -> float:
        return float(((fake_quantize(h, spec) - h).double() ** 2).sum())

    e = {b: err(act_spec_at(a_spec, b)) for b in (2, 4, 8)}
    assert abs(e[2] - err(act_spec_at(A, 2))) > 0.1 * e[2]  # the estimator matters here
    for b in (2, 4):
        want = exact / h.numel() * (e[b] - e[8])
        got = table["11"][(8, b)] - table["11"][(8, 8)]
        assert got == pytest.approx(want, rel=0.25)  # 24 draws: ~6 % standard error here


def test_noise_reads_the_activation_estimator(lenet_setup, one_thread) -> None:
    m, q, space, _ = lenet_setup

    def row(spec) -> dict:
        return layer_sensitivity("noise", SensitivityInput(m, q, space, W, spec, "lsq", data()), use_cache=False)["11"]

    mse, minmax = row(MSE), row(A)
    assert mse[(8, 2)] != pytest.approx(minmax[(8, 2)], rel=0.05)
    assert mse[(8, 8)] == pytest.approx(minmax[(8, 8)], rel=0.5)


def test_a_new_method_version_misses_the_cache(lenet_setup, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path))
    m, q, space, _ = lenet_setup
    calls: list[int] = []

    def method(version: int) -> None:
        @register("_versioned", version=version)
        def _v(inp: SensitivityInput) -> dict:
            calls.append(version)
            table = {s.name: {(w, a): float(version) for w in (2, 4, 8) for a in (2, 4, 8)} for s in inp.space.layers}
            return table | {q.key: {(0, a): float(version) for a in (2, 4, 8)} for q in inp.space.acts}

    inp = SensitivityInput(m, q, space, W, A, "lsq", data())
    method(1)
    k1 = cache_key("_versioned", inp, {})
    assert layer_sensitivity("_versioned", inp) == layer_sensitivity("_versioned", inp)
    method(2)
    assert cache_key("_versioned", inp, {}) != k1
    assert layer_sensitivity("_versioned", inp)["0"][(8, 8)] == 2.0  # not version 1's cached table
    assert calls == [1, 2]
    # the activation term changed what hessian computes: its version moved on
    assert VERSIONS["hessian"] >= 2


@pytest.mark.parametrize("version", [0, -1, 1.5, True])
def test_bad_versions_are_refused(version) -> None:
    with pytest.raises(MixedPrecisionError, match="version must be a positive integer"):
        register("_bad", version=version)
