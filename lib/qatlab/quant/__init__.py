"""Pure quantization math on torch tensors: no nn.Module, no training state.

from qatlab.quant import QuantSpec, fake_quantize, quantize, dequantize
spec = QuantSpec(bits=8, symmetric=False, granularity="tensor", estimator="minmax")
y = fake_quantize(x, spec)
q, qp = quantize(x, spec)
x2 = dequantize(q, qp)
"""

from .estimators import ESTIMATOR_FNS, EMARange, estimate_range
from .granularity import Layout, from_rows, layout_for, to_rows
from .metrics import cosine_similarity, error_report, max_abs_error, mse, sqnr_db
from .ops import compute_qparams, dequantize, fake_quantize, fake_quantize_reference, quantize
from .qparams import SCALE_MIN, QParams, qparams_from_range, scale_divisor, storage_dtype
from .requant import (
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
)
from .spec import ESTIMATORS, GRANULARITIES, QuantSpec, parse_granularity

__all__ = [
    "QuantSpec",
    "QParams",
    "Layout",
    "EMARange",
    "quantize",
    "dequantize",
    "fake_quantize",
    "fake_quantize_reference",
    "compute_qparams",
    "estimate_range",
    "qparams_from_range",
    "scale_divisor",
    "storage_dtype",
    "layout_for",
    "to_rows",
    "from_rows",
    "parse_granularity",
    "quantize_multiplier",
    "multiply_by_quantized_multiplier",
    "requantize",
    "sqnr_db",
    "mse",
    "max_abs_error",
    "cosine_similarity",
    "error_report",
    "ESTIMATORS",
    "GRANULARITIES",
    "ESTIMATOR_FNS",
    "SCALE_MIN",
]
