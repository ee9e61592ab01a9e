import torch

from qatlab.config import profile
from qatlab.intmodel import IntModel
from qatlab.train import run_trial

COLUMNS = {"trial_id", "model", "dataset", "method", "w_bits", "a_bits", "granularity", "estimator", "ste", "seed",
           "status", "test_acc", "fp32_acc", "epochs", "train_s", "error"}


def _tiny(**kw):
    return profile("tiny", **kw)


def test_trio_on_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    fp = run_trial(_tiny(method="fp32"))
    assert fp["status"] == "ok", fp["error"]
    assert COLUMNS <= set(fp)
    assert fp["fp32_acc"] > 0.85 and fp["fp32_cached"] is False
    ptq = run_trial(_tiny(method="ptq", w_bits=8, a_bits=8, ste="clipped"))
    assert ptq["status"] == "ok", ptq["error"]
    assert ptq["fp32_cached"] is True  # the sweep-wide FP32 cache
    assert ptq["test_acc"] > fp["fp32_acc"] - 0.03
    qat = run_trial(_tiny(method="qat", w_bits=4, a_bits=4, ste="lsq"), out_dir=tmp_path / "trial")
    assert qat["status"] == "ok", qat["error"]
    assert qat["test_acc"] > 0.8
    assert qat["int_agreement"] > 0.97 and abs(qat["int_acc"] - qat["test_acc"]) < 0.02
    ck = torch.load(tmp_path / "trial" / "model.pt", weights_only=True)
    assert ck["config"]["w_bits"] == 4
    IntModel.load(tmp_path / "trial" / "intmodel.pt")


def test_same_seed_same_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path))
    cfg = _tiny(method="qat", w_bits=4, a_bits=4, ste="pact", epochs=1)
    a = run_trial(cfg, use_cache=False)
    b = run_trial(cfg, use_cache=False)
    assert a["status"] == b["status"] == "ok", (a["error"], b["error"])
    for k in ("fp32_acc", "test_acc", "val_acc", "int_acc", "int_agreement"):
        assert a[k] == b[k], k


def test_failed_trial_keeps_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path))
    r = run_trial({"dataset": "digits", "w_bits": 1})
    assert r["status"] == "failed" and "w_bits" in r["error"]
    # The histogram estimator refuses 9-value weight channels (the first conv).
    r = run_trial(_tiny(method="ptq", estimator="entropy", epochs=1))
    assert r["status"] == "failed" and "Traceback" in r["error"] and "entropy" in r["error"]


def test_checkpoint_round_trip_and_bad_files(tmp_path, monkeypatch):
    import pytest

    from qatlab.train import CheckpointError, load_checkpoint, predictions
    from qatlab.data import load_dataset

    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    r = run_trial(_tiny(method="qat", w_bits=4, a_bits=4, ste="lsq", epochs=1), out_dir=tmp_path / "t")
    assert r["status"] == "ok", r["error"]
    model, cfg, shape = load_checkpoint(tmp_path / "t" / "model.pt")
    assert cfg.w_bits == 4 and shape == (1, 8, 8)
    x, y = load_dataset("digits").test.tensors
    acc = float((predictions(model, x, torch.device("cpu")) == y).float().mean())
    assert acc == r["test_acc"]
    data = (tmp_path / "t" / "model.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"x": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a qatlab checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")
