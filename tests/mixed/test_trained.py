"""End to end: plan a configuration, train it with run_trial, and price the trained
IntModel with the simulators: the prediction is exact."""

from __future__ import annotations

import pytest

from qatlab.config import profile
from qatlab.hw.asic import ArrayConfig
from qatlab.intmodel import IntModel
from qatlab.mixed import Budget, FpgaTarget, plan, simulate_costs, trial_configs
from qatlab.train import run_trial


@pytest.mark.slow
def test_trained_mixed_intmodel_costs_what_was_predicted(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    cfg = profile("tiny", epochs=1)
    p = plan(cfg, [Budget("asic_energy", 0.5, relative=True)], "noise", fpga=FpgaTarget("ZCU104"), calib_batches=2, val_samples=200)
    (chosen,) = p.configs
    (trial,) = trial_configs(cfg, p.configs)
    rec = run_trial(trial, tmp_path / "trial")
    assert rec["status"] == "ok", rec["error"]
    im = IntModel.load(tmp_path / "trial" / "intmodel.pt")
    got = {op.name: [op.attrs["w_bits"], op.attrs["a_bits"]] for op in im.compute_ops()}
    assert sorted(got.values()) == sorted(v for v in chosen.layer_bits.values() if len(v) == 2)  # [a_bits] entries: no compute op
    sim = simulate_costs(im, ArrayConfig(), "ZCU104", p.tables.folding)
    for k, v in sim.items():
        assert chosen.native[k] == v, k
