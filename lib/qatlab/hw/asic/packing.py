"""Sub-8-bit operand packing on the array: the cost model mixed-precision search prices.

The model (docs/hardware-ops.md, "Sub-8-bit packing"):

* **Lanes.** Each cell's MAC lane is 8 bits wide. Narrower operands split it into
  sub-multipliers: ``k = 8 // max(w_bits, a_bits)`` products per cell per cycle (2 at
  4 bits, 4 at 2 bits), capped at :data:`MAX_PACK`. Both operands of a product must fit
  one sub-lane, so a W2A8 layer does not pack (``k = 1``): the wider operand sets it.
  This is the simulator's existing ``pack = 0`` mode (:func:`.simulate.pack_factor`):
  the reduction axis shrinks to ``ceil(K / k)``, which cuts cycles, SRAM words and
  register traffic by ``k``; MAC energy scales with ``w_bits · a_bits``.
* **Memory traffic in bits.** On chip, operands travel lane-aligned: one SRAM word
  holds ``k`` operands (what the array reads per cell and cycle), so SRAM traffic is
  the simulator's word count times 8 bits. In DRAM, weights are stored densely at
  their own width and unpacked into lane words on their way into the filter SRAM, so a
  W2A8 layer's weights cost 2 bits each to fetch although they occupy 8-bit lanes on
  chip. The DRAM filter traffic is therefore ``dram_filter_reads · k · w_bits`` bits
  instead of ``dram_filter_reads · 8``; :func:`packed_record` charges that difference.
  Activations keep the simulator's lane-aligned DRAM words (they are produced by the
  array in lane layout and re-read in it).

Everything here wraps the simulator's public functions (:func:`.network.op_record`),
so the closed form and its checks stay the simulator's own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from qatlab.hw.asic.config import ArrayConfig
from qatlab.hw.asic.energy import EnergyTable
from qatlab.hw.asic.network import op_record, simulate_intmodel
from qatlab.hw.asic.simulate import AsicReport, LayerRecord
from qatlab.hw.opgraph import OpInfo

LANE_BITS = 8
MAX_PACK = 4


def lane_products(w_bits: int, a_bits: int) -> int:
    """Products one 8-bit MAC lane does per cycle: 1 at 8 bits, 2 at 4, 4 at 2."""
    for b in (w_bits, a_bits):
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"bit widths must be positive integers, got w_bits={w_bits!r}, a_bits={a_bits!r}")
    return max(1, min(MAX_PACK, LANE_BITS // max(w_bits, a_bits)))


def packed_config(cfg: ArrayConfig) -> ArrayConfig:
    """``cfg`` with packing on, as this model defines it (automatic, at most 4 per lane)."""
    return cfg.replace(pack=0, pack_max=MAX_PACK)


def weight_dram_bits(rec: LayerRecord, w_bits: int) -> int:
    """Bits of weights fetched from DRAM when stored densely at ``w_bits``."""
    return int(rec.dram_filter_reads) * int(rec.pack) * int(w_bits)


def packed_record(info: OpInfo, cfg: ArrayConfig, table: EnergyTable, batch: int = 1) -> LayerRecord:
    """One op's record under this packing model (``cfg`` must have packing on)."""
    rec = op_record(info, cfg, table, batch)
    if rec.unit != "array":
        return rec
    w_bits = int(info.op.attrs["w_bits"])
    lane_bits = rec.dram_filter_reads * LANE_BITS
    saved_bytes = (lane_bits - weight_dram_bits(rec, w_bits)) / 8
    if saved_bytes <= 0:
        return rec
    de = saved_bytes * table.dram_per_byte()
    return replace(rec, energy_dram_pj=rec.energy_dram_pj - de, energy_pj=rec.energy_pj - de)


def simulate_packed(model: Any, config: ArrayConfig, batch: int = 1, energy: EnergyTable | None = None) -> AsicReport:
    """An IntModel on the array with sub-8-bit packing: one record per op, and totals."""
    return simulate_intmodel(model, packed_config(config), batch, energy, record=packed_record)
