"""A TPU-style systolic-array accelerator: SCALE-Sim-compatible counts, energy, latency.

Python API::

    from qatlab.hw.asic import ArrayConfig, simulate
    from qatlab.hw.workload import read_topology
    cfg = ArrayConfig.from_cfg("scale.cfg")            # or ArrayConfig(rows=32, cols=32, dataflow="ws")
    report = simulate(read_topology("net.csv"), cfg)   # any list[Layer] (e.g. from an IntModel)
    report.layers[0].total_cycles, report.totals["tops_per_w"]
    simulate_intmodel(int_model, cfg)                  # a converted IntModel (qatlab.intmodel)

Modules: :mod:`.config` (the ``.cfg`` reader), :mod:`.dataflow` (folding, closed-form
compute counts), :mod:`.memory` (SRAM/DRAM closed forms and the write-buffer replay),
:mod:`.calc_reads` (CALC-mode DRAM reads of block streams in closed form),
:mod:`.trace` and :mod:`.user_replay` (replays of SCALE-Sim's read buffers: where no
closed form exists, and everywhere with ``dram_model="exact"``), :mod:`.energy` (cited energy table, node scaling),
:mod:`.simulate` (records and totals), :mod:`.network` (an IntModel op by op),
:mod:`.vector` (the vector unit beside the array), :mod:`.stepped` (the cycle-stepped functional
model that checks the closed form), :mod:`.scalesim_reports` (reads SCALE-Sim's own
report files for comparison).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qatlab.hw.asic.config import ArrayConfig, ConfigError
from qatlab.hw.asic.dataflow import ArrayMapping
from qatlab.hw.asic.energy import EnergyTable
from qatlab.hw.asic.simulate import RECORD_FIELDS, AsicReport, LayerRecord, simulate, simulate_layer

if TYPE_CHECKING:
    from qatlab.hw.asic.network import simulate_intmodel


def __getattr__(name: str) -> Any:
    # The IntModel path (network, vector unit, op graph) loads on first use (PEP 562): a
    # topology simulation never needs it, and a command's start-up is most of its time.
    if name == "simulate_intmodel":
        from qatlab.hw.asic.network import simulate_intmodel

        return simulate_intmodel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArrayConfig",
    "ArrayMapping",
    "AsicReport",
    "ConfigError",
    "EnergyTable",
    "LayerRecord",
    "RECORD_FIELDS",
    "simulate",
    "simulate_intmodel",
    "simulate_layer",
]
