"""Typed errors of the FPGA model. All are ValueErrors: each is a bad input or request.

Messages name the layer and the field at fault, so a user can fix the file they wrote.
"""

from __future__ import annotations


class FpgaError(ValueError):
    """Base class of every error the FPGA model raises on purpose."""


class UnknownDeviceError(FpgaError):
    """A device name that is not in the catalog; the message lists the known names."""


class FoldingError(FpgaError):
    """An infeasible or malformed folding: PE not dividing MH, SIMD not dividing MW, ..."""


class UnreachableTargetError(FpgaError):
    """A throughput target that no folding can meet on the device (or at all)."""


class DoesNotFitError(FpgaError):
    """Even the smallest folding of the network exceeds the device's resources."""


class ChainError(FpgaError):
    """Layers that do not stream into each other (element counts differ), where a
    functional simulation needs them to."""


class ParamsError(FpgaError):
    """Integer layer parameters (weights, bias, requantization) that do not match the layer."""


class AccumulatorOverflowError(FpgaError):
    """A dot product that leaves the accumulator width the design was given."""


class DeadlockError(FpgaError):
    """The stepped simulation stopped making progress: a FIFO too shallow for its
    producer's and consumer's word widths."""
