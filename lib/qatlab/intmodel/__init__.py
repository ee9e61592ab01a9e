"""The integer model: convert() from a QAT model, its executors (by backend name), save/load."""

from .backends import UnknownBackendError, backend_names, get_runner, predict, register_backend, run
from .convert import convert
from .model import FORMAT, VERSION, ActQ, IntModel, IntModelFormatError, IntOp
from .reference import AccumulatorOverflowError, dequantize_output

__all__ = [
    "convert",
    "IntModel",
    "IntOp",
    "ActQ",
    "IntModelFormatError",
    "AccumulatorOverflowError",
    "run",
    "predict",
    "dequantize_output",
    "FORMAT",
    "VERSION",
    "backend_names",
    "get_runner",
    "register_backend",
    "UnknownBackendError",
]
