import pytest

from qatlab.config import ConfigError, TrainConfig, profile


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"method": "int4"}, "method"),
        ({"w_bits": 1}, "w_bits"),
        ({"a_bits": "8"}, "a_bits"),
        ({"granularity": "rows"}, "granularity"),
        ({"estimator": "max"}, "estimator"),
        ({"ste": "dorefa"}, "ste"),
        ({"epochs": -1}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"limit_train": 0}, "limit_train"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"device": "tpu"}, "device"),
        ({"batch_size": True}, "batch_size"),
    ],
)
def test_bad_fields_are_named(kw, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**kw)


def test_unknown_keys_listed():
    with pytest.raises(ConfigError, match="unknown config key.*wbits"):
        TrainConfig.from_dict({"wbits": 4})


def test_trial_id_and_fp32_key():
    a = TrainConfig(method="qat", w_bits=4)
    assert a.trial_id == TrainConfig(method="qat", w_bits=4).trial_id
    assert a.trial_id != TrainConfig(method="qat", w_bits=8).trial_id
    assert a.trial_id == TrainConfig(method="qat", w_bits=4, device="cpu").trial_id
    # FP32 pretraining is shared across methods and bit widths, not across seeds.
    assert a.fp32_key == TrainConfig(method="ptq", w_bits=2).fp32_key
    assert a.fp32_key != TrainConfig(seed=1).fp32_key


def test_profiles():
    assert profile("quick").limit_train is not None
    assert profile("full", w_bits=4).w_bits == 4
    with pytest.raises(ConfigError, match="profile"):
        profile("huge")


# ---- one place for the fields: kinds, stages, ids -----------------------------------------

import hashlib  # noqa: E402
import json  # noqa: E402
from dataclasses import fields  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qatlab.config import (  # noqa: E402
    FIELDS,
    FP32_FIELDS,
    FP32_IGNORED,
    FieldTypeError,
    check_field,
    config_digest,
    dataset_kind,
    fields_of,
    normalize_field,
)

# The fields as they were when trial ids were first published, and the id as it was
# computed then: sha256 over every one of them but the device.
LEGACY_FIELDS = (
    "model", "dataset", "method", "w_bits", "a_bits", "granularity", "estimator", "ste", "seed", "epochs",
    "qat_epochs", "batch_size", "lr", "qat_lr", "limit_train", "limit_test", "val_fraction", "calib_batches",
    "first_last_bits", "freeze_fraction", "rounding", "device",
)  # fmt: skip
LEGACY_FP32 = ("model", "dataset", "seed", "epochs", "batch_size", "lr", "limit_train", "val_fraction")


def legacy_digest(d: dict, keys) -> str:
    return hashlib.sha256(json.dumps({k: d[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


@settings(max_examples=40, deadline=None)
@given(
    method=st.sampled_from(["fp32", "ptq", "qat"]),
    bits=st.integers(2, 16),
    seed=st.integers(0, 9),
    lr=st.floats(1e-6, 1.0),
    limit=st.one_of(st.none(), st.integers(1, 10**6)),
    dataset=st.sampled_from(["digits", "fashion-mnist"]),
    device=st.sampled_from(["auto", "cpu", "cuda:1"]),
)
def test_ids_of_existing_configs_are_unchanged(method, bits, seed, lr, limit, dataset, device):
    cfg = TrainConfig(method=method, w_bits=bits, a_bits=bits, seed=seed, lr=lr, limit_train=limit, dataset=dataset, device=device)
    d = cfg.to_dict()
    assert cfg.trial_id == legacy_digest(d, [k for k in LEGACY_FIELDS if k != "device"])
    assert cfg.fp32_key == legacy_digest(d, LEGACY_FP32)
    assert config_digest(d) == cfg.trial_id


def test_stages_partition_the_fields_and_derive_the_fp32_sets():
    stages = [fields_of(s) for s in ("fp32", "quant", "trial", "none")]
    assert sorted(n for s in stages for n in s) == sorted(FIELDS)
    assert FP32_FIELDS == stages[0] and FP32_IGNORED == stages[1]
    assert set(LEGACY_FP32) <= set(FP32_FIELDS) and {"model_args", "loader_args"} <= set(FP32_FIELDS)
    assert "method" not in FP32_IGNORED and "device" in fields_of("none") and "num_workers" in fields_of("none")


# A valid non-default value per field: changing it moves the trial id unless the field
# is stage "none", and the FP32 key exactly when the field is an fp32 one.
OTHER = {
    "model": "mlp", "dataset": "digits", "method": "ptq", "w_bits": 4, "a_bits": 4, "granularity": "tensor",
    "estimator": "mse", "ste": "pact", "seed": 3, "epochs": 5, "qat_epochs": 2, "batch_size": 64, "lr": 0.01,
    "qat_lr": 0.001, "limit_train": 100, "limit_test": 50, "val_fraction": 0.2, "calib_batches": 3,
    "first_last_bits": 8, "freeze_fraction": 0.5, "rounding": "fixed", "device": "cpu", "num_workers": 2,
    "model_args": {"width": 3}, "loader_args": {"n": 1}, "layer_bits": {"0": [4, 2]},
}  # fmt: skip


def test_each_field_moves_the_keys_its_stage_says():
    assert set(OTHER) == set(FIELDS)
    base = {"model": "pkg.nets:net", "dataset": "pkg.data:load"}  # so that model_args / loader_args apply
    ref = TrainConfig(**base)
    for name, value in OTHER.items():
        cfg = TrainConfig(**{**base, name: value})
        stage = FIELDS[name].metadata["stage"]
        assert (cfg.trial_id != ref.trial_id) == (stage != "none"), name
        assert (cfg.fp32_key != ref.fp32_key) == (stage == "fp32"), name


@pytest.mark.parametrize(
    "name, value, err, match",
    [
        ("model", "vgg", FieldTypeError, "model: unknown model 'vgg'"),
        ("model", "pkg.mod:", FieldTypeError, "unknown model"),
        ("dataset", "cifar", FieldTypeError, "dataset: unknown dataset 'cifar'"),
        ("model_args", [1], FieldTypeError, "model_args: expected a mapping"),
        ("model_args", {"a": float("nan")}, FieldTypeError, "plain JSON"),
        ("model_args", {"not an id": 1}, FieldTypeError, "identifiers"),
        ("lr", "fast", FieldTypeError, "lr: expected a number"),
        ("lr", float("inf"), FieldTypeError, "finite"),
        ("num_workers", -1, ConfigError, r"num_workers must be in 0\.\.1024, got -1"),
        # Absurd sizes are refused up front, not discovered after years of training or as
        # an overflow deep inside torch.
        ("epochs", 99999999999999999999999, ConfigError, r"epochs must be in 0\.\.100000"),
        ("qat_epochs", 10**6, ConfigError, "qat_epochs must be in"),
        ("seed", 2**64, ConfigError, "seed must be in"),
        ("batch_size", 2**40, ConfigError, "batch_size must be in"),
        ("limit_train", 2**40, ConfigError, "limit_train must be a positive integer up to"),
        ("calib_batches", 2**31, ConfigError, "calib_batches must be in"),
        ("device", "cuda:x", ConfigError, "device must be"),
    ],
)
def test_field_checks_name_the_field(name, value, err, match):
    with pytest.raises(err, match=match) as e:
        check_field(name, value)
    assert e.value.field == name


def test_normalisation_is_shared():
    assert normalize_field("lr", 1) == 1.0 and isinstance(normalize_field("lr", 1), float)
    assert normalize_field("lr", "1e-3") == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert TrainConfig(lr=1).trial_id == TrainConfig(lr=1.0).trial_id
    assert normalize_field("model_args", {"k": (1, 2)}) == {"k": [1, 2]}
    assert normalize_field("w_bits", 1) == 1  # the range is check_field's, not the kind's


@pytest.mark.parametrize(
    "value, kind",
    [
        ("digits", "builtin"),
        ("a.b:load", "import"),
        ("x/y.npz", "npz"),
        ("d.NPZ", "npz"),
        ("./imgs", "folder"),
        ("/data/imgs/", "folder"),
        ("~/imgs", "folder"),
        ("cifar", "unknown"),
    ],
)
def test_dataset_kinds(value, kind):
    assert dataset_kind(value) == kind


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="model_args apply to an import-path model only"):
        TrainConfig(model="lenet", model_args={"hidden": 3})
    with pytest.raises(ConfigError, match="loader_args do not apply to a .npz file"):
        TrainConfig(dataset="/d/x.npz", loader_args={"a": 1})
    with pytest.raises(ConfigError, match="loader_args do not apply to a built-in"):
        TrainConfig(dataset="digits", loader_args={"a": 1})
    with pytest.raises(ConfigError, match="loader_args are invalid for an image folder: channels must be 1 or 3"):
        TrainConfig(dataset="/d/imgs", loader_args={"channels": 2})
    ok = TrainConfig(model="pkg.nets:net", model_args={"w": 2}, dataset="/d/imgs", loader_args={"size": [8, 8]})
    assert TrainConfig.from_dict(ok.to_dict()) == ok and hash(ok) == hash(TrainConfig.from_dict(ok.to_dict()))
    assert {f.name for f in fields(TrainConfig)} == set(FIELDS)


def test_errors_survive_pickling():
    import pickle

    for e in (ConfigError("lr", "must be > 0, got -1.0"), FieldTypeError("w_bits", "expected an integer, got 'x'")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e) and back.field == e.field


def test_layer_bits_field():
    # Unset, it stays out of the id: every existing trial id is unchanged.
    assert TrainConfig(layer_bits={}).trial_id == TrainConfig().trial_id
    a = TrainConfig(layer_bits={"4": (2, 4), "0": [8, 8]})
    assert a.layer_bits == {"0": [8, 8], "4": [2, 4]}  # canonical: sorted keys, lists
    assert a.trial_id == TrainConfig(layer_bits={"0": [8, 8], "4": [2, 4]}).trial_id != TrainConfig().trial_id
    assert a.fp32_key == TrainConfig().fp32_key  # the FP32 model is shared
    assert TrainConfig.from_dict(a.to_dict()) == a
    with pytest.raises(FieldTypeError, match="layer_bits: '0' must map to \\[w_bits, a_bits\\]"):
        TrainConfig(layer_bits={"0": 4})
    with pytest.raises(FieldTypeError, match="layer_bits: expected an integer"):
        TrainConfig(layer_bits={"0": [4, "x"]})
    with pytest.raises(FieldTypeError, match="keys must be module names"):
        TrainConfig(layer_bits={1: [4, 4], "0": [4, 4]})
    with pytest.raises(ConfigError, match="layer_bits '0': bits must be in 2..16, got \\[1, 4\\]"):
        TrainConfig(layer_bits={"0": [1, 4]})


def test_layer_bits_one_element_form():
    # an activation quantizer's owner takes [a_bits]; both forms live side by side
    a = TrainConfig(layer_bits={"add_3": (4,), "0": [8, 8], "0.act_fq": [2]})
    assert a.layer_bits == {"0": [8, 8], "0.act_fq": [2], "add_3": [4]}
    assert TrainConfig.from_dict(a.to_dict()) == a
    assert a.trial_id != TrainConfig(layer_bits={"0": [8, 8], "0.act_fq": [2], "add_3": [2]}).trial_id
    with pytest.raises(FieldTypeError, match="layer_bits: 'add_3' must map to \\[w_bits, a_bits\\] \\(a conv/linear\\) or \\[a_bits\\]"):
        TrainConfig(layer_bits={"add_3": [4, 4, 4]})
    with pytest.raises(FieldTypeError, match="'add_3' must map to"):
        TrainConfig(layer_bits={"add_3": []})
    with pytest.raises(ConfigError, match="layer_bits '0.act_fq' names a layer's output quantizer and takes \\[a_bits\\], got \\[4, 4\\]"):
        TrainConfig(layer_bits={"0.act_fq": [4, 4]})
    with pytest.raises(ConfigError, match="layer_bits 'add_3': bits must be in 2..16, got \\[1\\]"):
        TrainConfig(layer_bits={"add_3": [1]})
