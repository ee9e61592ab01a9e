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
