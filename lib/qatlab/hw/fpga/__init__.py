"""A FINN-style streaming dataflow accelerator, estimated and simulated.

Each layer is a matrix-vector unit (MVAU: PE x SIMD multiply-accumulate lanes) fed by
a sliding-window unit (line buffers) or a DownSampler; layers stream into each other
through FIFOs. The cost model is FINN's (see :mod:`.cycles` and :mod:`.resources` for
the formulas and their sources); devices come from the vendors' data sheets
(:mod:`.devices`).

Python API::

    from qatlab.hw.workload import read_topology
    from qatlab.hw import fpga

    layers = read_topology("lenet.csv")
    rep = fpga.analyze(layers, "ZCU104", target_fps=10_000)       # or folding=..., or fastest
    rep.to_dict()                                                  # {"layers": [...], "totals": {...}}
    rep = fpga.analyze_intmodel(int_model, "ZCU104")               # every op of an IntModel, one row each
    res = fpga.simulate(layers, params, rep.folding, frames)       # cycle-stepped, bit-exact
    outs = fpga.reference_forward(layers, params, frame)           # the integer reference
    params = fpga.params_from_intmodel(int_model)                  # from a trained IntModel
    fpga.check_accumulators(layers, params, frames)                # no accumulator overflows
    fpga.accumulator_study(layers, params, frames, [16, 14, 12])   # what narrower ones cost

Modules: ``devices`` (catalog), ``geometry`` (FINN's view of a layer), ``folding``
(PE/SIMD configs), ``cycles``, ``resources``, ``accumulator``, ``activation``
(requantization and thresholds), ``reference`` (numpy integer semantics), ``schedule``
(max-plus pipeline timing), ``analytic`` (:func:`analyze`), ``search`` (folding
search), ``stream`` (stepped simulation), ``study`` (narrow-accumulator accuracy,
overflow check), ``convert`` (parameters from an IntModel), ``units`` (FINN's other
streaming units), ``network`` (an IntModel, every op), ``graph`` (branch and join
timing, skip-branch FIFOs).

Every estimate defaults to FINN's own cost functions for the design FINN's default
build makes (``cost_model="finn"``; tests/hw/fpga/data/finn_reference.json holds
FINN's values); ``cost_model="qatlab"`` adds what FINN leaves uncounted
(docs/fpga-finn.md).
"""

from __future__ import annotations

from .accumulator import AccumulatorBits, accumulate, accumulator_bits, bits_for_range
from .activation import apply_thresholds, requantize, thresholds
from .analytic import FpgaReport, LayerReport, analyze
from .convert import params_from_intmodel
from .devices import DEVICES, FINN_RES_LIMITS, Device, device_names, get_device
from .errors import (
    AccumulatorOverflowError,
    ChainError,
    DeadlockError,
    DoesNotFitError,
    FoldingError,
    FpgaError,
    ParamsError,
    UnknownDeviceError,
    UnreachableTargetError,
)
from .folding import LayerFolding, parse_folding, read_folding, write_folding
from .geometry import Geometry, geometry
from .network import analyze_intmodel
from .reference import IntLayer, reference_forward
from .schedule import compute_schedule
from .search import SearchResult, search_folding
from .stream import StreamResult, simulate
from .study import AccumulatorStudy, accumulator_study, check_accumulators

__all__ = [
    "AccumulatorBits",
    "AccumulatorOverflowError",
    "AccumulatorStudy",
    "ChainError",
    "DEVICES",
    "DeadlockError",
    "Device",
    "DoesNotFitError",
    "FINN_RES_LIMITS",
    "FoldingError",
    "FpgaError",
    "FpgaReport",
    "Geometry",
    "IntLayer",
    "LayerFolding",
    "LayerReport",
    "ParamsError",
    "SearchResult",
    "StreamResult",
    "UnknownDeviceError",
    "UnreachableTargetError",
    "accumulate",
    "accumulator_bits",
    "accumulator_study",
    "analyze",
    "analyze_intmodel",
    "apply_thresholds",
    "bits_for_range",
    "check_accumulators",
    "compute_schedule",
    "device_names",
    "geometry",
    "get_device",
    "params_from_intmodel",
    "parse_folding",
    "read_folding",
    "reference_forward",
    "requantize",
    "search_folding",
    "simulate",
    "thresholds",
    "write_folding",
]
