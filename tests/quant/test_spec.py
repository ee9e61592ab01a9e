import pytest

from qatlab.quant import QuantSpec, parse_granularity


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"bits": 1}, "bits"),
        ({"bits": 17}, "bits"),
        ({"bits": 2.5}, "bits"),
        ({"bits": True}, "bits"),
        ({"bits": "8"}, "bits"),
        ({"granularity": "row"}, "granularity"),
        ({"granularity": "group"}, "granularity"),
        ({"granularity": "group:0"}, "granularity"),
        ({"granularity": "group:x"}, "granularity"),
        ({"granularity": "channel:3"}, "granularity"),
        ({"estimator": "max"}, "estimator"),
        ({"scale_rule": "half"}, "scale_rule"),
        ({"axis": 1.0}, "axis"),
        ({"alpha": 0}, "alpha"),
        ({"percentile": 40}, "percentile"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"mse_grid": 1}, "mse_grid"),
        ({"entropy_bins": 8}, "entropy_bins"),
        ({"narrow_range": True, "symmetric": False}, "narrow_range"),
        ({"symmetric": "yes"}, "symmetric"),
    ],
)
def test_bad_fields_name_themselves(kw, field):
    with pytest.raises((ValueError, TypeError), match=field):
        QuantSpec(**kw)


@pytest.mark.parametrize(
    "kw, qmin, qmax",
    [
        ({"bits": 8}, -128, 127),
        ({"bits": 8, "narrow_range": True}, -127, 127),
        ({"bits": 8, "symmetric": False}, 0, 255),
        ({"bits": 8, "symmetric": False, "signed": True}, -128, 127),
        ({"bits": 8, "signed": False}, 0, 255),
        ({"bits": 4}, -8, 7),
        ({"bits": 2}, -2, 1),
        ({"bits": 16}, -32768, 32767),
        ({"bits": 16, "symmetric": False}, 0, 65535),
    ],
)
def test_integer_ranges(kw, qmin, qmax):
    s = QuantSpec(**kw)
    assert (s.qmin, s.qmax) == (qmin, qmax)


def test_group_parse_and_dict_round_trip():
    assert parse_granularity("group:32") == ("group", 32)
    s = QuantSpec(bits=4, granularity="group:16", estimator="mse")
    assert s.group_size == 16 and s.granularity_kind == "group"
    assert QuantSpec.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown QuantSpec field"):
        QuantSpec.from_dict({"bitz": 8})
