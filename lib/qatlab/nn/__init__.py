"""QAT: straight-through estimators, fake-quant modules, prepare_qat, BN folding, PTQ calibration."""

from .errors import UnsupportedLayerError
from .fake_quant import FakeQuant, set_calibrating, set_fake_quant, set_observe
from .modules import (
    QUANT_COMPUTE,
    QuantAct,
    QuantAdd,
    QuantAvgPool,
    QuantCat,
    QuantClamp,
    QuantConv2d,
    QuantLinear,
    QuantLUT,
    QuantMean,
    QuantMul,
    act_codes,
    clamp_codes,
)
from .prepare import calibrate, freeze_bn, prepare_qat, quantizers
from .ste import STE_KINDS, grad_scale, lsq_fake_quant, lsq_fake_quant_reference, pact_fake_quant, round_ste

__all__ = [
    "FakeQuant",
    "QuantAct",
    "QuantAdd",
    "QuantAvgPool",
    "QuantConv2d",
    "QuantLinear",
    "QUANT_COMPUTE",
    "QuantCat",
    "QuantClamp",
    "QuantLUT",
    "QuantMean",
    "QuantMul",
    "act_codes",
    "clamp_codes",
    "prepare_qat",
    "calibrate",
    "freeze_bn",
    "quantizers",
    "set_observe",
    "set_fake_quant",
    "set_calibrating",
    "UnsupportedLayerError",
    "STE_KINDS",
    "round_ste",
    "grad_scale",
    "lsq_fake_quant",
    "lsq_fake_quant_reference",
    "pact_fake_quant",
]
