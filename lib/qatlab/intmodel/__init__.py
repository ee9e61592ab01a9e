"""The integer model: convert() from a QAT model, the CPU reference executor, save/load."""
from .convert import convert
from .model import FORMAT, VERSION, ActQ, IntModel, IntModelFormatError, IntOp
from .reference import AccumulatorOverflowError, dequantize_output, predict, run

__all__ = [
    "convert", "IntModel", "IntOp", "ActQ", "IntModelFormatError", "AccumulatorOverflowError",
    "run", "predict", "dequantize_output", "FORMAT", "VERSION",
]
