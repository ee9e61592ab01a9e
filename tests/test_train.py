import pytest
import torch

from qatlab.config import profile
from qatlab.intmodel import IntModel
from qatlab.train import run_trial

COLUMNS = {
    "trial_id",
    "model",
    "dataset",
    "method",
    "w_bits",
    "a_bits",
    "granularity",
    "estimator",
    "ste",
    "seed",
    "status",
    "test_acc",
    "fp32_acc",
    "epochs",
    "train_s",
    "error",
}


def _tiny(**kw):
    return profile("tiny", **kw)


@pytest.mark.slow  # trains
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


@pytest.mark.slow  # trains
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


@pytest.mark.slow  # trains
def test_checkpoint_round_trip_and_bad_files(tmp_path, monkeypatch):
    import pytest

    from qatlab.data import load_dataset
    from qatlab.train import CheckpointError, load_checkpoint, predictions

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


def _npz(path, n_train=300, n_test=100, side=8, classes=3):
    """Separable data: class c is brighter by 90 grey levels per class (a pooled CNN sees that)."""
    import numpy as np

    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % classes
        x = (rng.integers(0, 60, (n, side, side)) + 90 * y[:, None, None]).astype(np.uint8)
        return x, y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return str(path)


@pytest.mark.slow  # ~8 s on 2 CPU cores, most of it the first conv backward's warm-up
def test_user_model_on_npz_data_end_to_end(tmp_path, monkeypatch):
    from qatlab.train import load_checkpoint

    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    cfg = {"model": "tests.usercode.nets:tiny_cnn", "model_args": {"width": 8}, "dataset": _npz(tmp_path / "d.npz"),
           "method": "qat", "w_bits": 8, "a_bits": 8, "epochs": 1, "qat_epochs": 1, "batch_size": 32, "lr": 0.02,
           "calib_batches": 2}  # fmt: skip
    r = run_trial(cfg, out_dir=tmp_path / "t")
    assert r["status"] == "ok", r["error"]
    assert r["n_train"] == 270 and r["n_test"] == 100 and r["model_args"] == {"width": 8}
    # one epoch of 9 batches: well above chance (1/3), not converged
    assert r["fp32_acc"] > 0.6 and r["test_acc"] > 0.6 and r["int_agreement"] > 0.97
    assert list((tmp_path / "cache" / "fp32").glob("tests.usercode.nets_tiny_cnn-*-*.pt"))  # a safe cache name
    model, back, shape = load_checkpoint(tmp_path / "t" / "model.pt")
    assert back.model_args == {"width": 8} and shape == (1, 8, 8)


def test_streamed_image_folder_and_loader_trials(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "imgs" / f"class{c}").mkdir(parents=True)
        for i in range(30):
            a = rng.integers(0, 60, (6, 6)).astype(np.uint8)
            a[:, 3 * c : 3 * c + 3] = 250
            Image.fromarray(a).save(tmp_path / "imgs" / f"class{c}" / f"{i}.png")
    common = {"model": "tests.usercode.nets:TinyMLP", "epochs": 2, "batch_size": 16, "lr": 0.02, "calib_batches": 2}
    r = run_trial({**common, "dataset": str(tmp_path / "imgs"), "method": "ptq", "loader_args": {"test_fraction": 0.25}})
    assert r["status"] == "ok", r["error"]
    assert r["n_test"] == 16 and r["test_acc"] > 0.9 and r["int_agreement"] > 0.9
    r = run_trial({**common, "dataset": "tests.usercode.loaders:load", "loader_args": {"n_train": 200}, "method": "fp32"})
    assert r["status"] == "ok", r["error"]
    assert r["n_train"] == 180 and r["fp32_acc"] > 0.9


def test_bad_user_model_fails_the_trial_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path))
    r = run_trial({"model": "tests.usercode.nets:not_a_model", "dataset": _npz(tmp_path / "d.npz", 40, 10), "epochs": 1})
    assert r["status"] == "failed" and "UserModelError" in r["error"] and "not a torch.nn.Module" in r["error"]
