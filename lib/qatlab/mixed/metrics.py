"""The hardware metrics a budget can name: what each measures, its unit, its kind.

``sum`` metrics add over ops (energy, cycles, FPGA resources, bytes, BOPs); ``fpga_fps``
is a minimum frame rate, which the search turns into a per-layer cycle bound (a
dataflow design runs at its slowest layer's rate: a max over layers, not a sum).
Tables hold native units (pJ, cycles); ``scale`` converts a budget's unit to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MixedPrecisionError


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "sum" | "fps"
    unit: str  # the unit budgets and reports use
    table: str  # the problem's table it bounds
    scale: float  # table units per budget unit
    doc: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "asic_energy", "sum", "uJ", "asic_energy_pj", 1e6, "energy per inference on the systolic array (array + vector unit + memories)"
        ),
        Metric("asic_cycles", "sum", "cycles", "asic_cycles", 1.0, "clock cycles per inference on the systolic array"),
        Metric("fpga_lut", "sum", "LUT", "fpga_lut", 1.0, "LUTs of the dataflow design's matrix units at the folding"),
        Metric("fpga_dsp", "sum", "DSP", "fpga_dsp", 1.0, "DSP slices of the dataflow design's matrix units"),
        Metric("fpga_bram18", "sum", "BRAM18", "fpga_bram18", 1.0, "18 kb block RAMs of the dataflow design's matrix units"),
        Metric("fpga_fps", "fps", "fps", "fpga_cycles", 1.0, "frames per second of the dataflow design (slowest layer)"),
        Metric("weight_bytes", "sum", "B", "weight_bytes", 1.0, "bytes of weights at their bit widths"),
        Metric("bops", "sum", "BOP", "bops", 1.0, "bit operations: MACs x w_bits x a_bits"),
    )
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise MixedPrecisionError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}")
    return METRICS[name]
