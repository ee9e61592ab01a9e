"""An IntModel on the accelerator: one record per op, every op in the totals.

* conv (``groups == 1``) and linear: the systolic array, one SCALE-Sim layer each
  (:func:`qatlab.hw.workload.op_layer`);
* grouped and depthwise conv: one SCALE-Sim layer per group, as SCALE-Sim maps a
  grouped topology (:func:`qatlab.hw.workload.group_layers`), the groups run one after
  another and the op's record sums them. A depthwise group is a GEMM with one
  reduction row per kernel tap and one column: the records' utilizations show how
  little of the array that uses;
* everything else: the vector unit (:mod:`.vector`), or nothing for pass-through ops.

All groups of a conv have the same geometry, so :func:`grouped_record` simulates one
and scales it; :func:`grouped_record_reference` simulates every group and sums them
(the tests compare the two).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

from qatlab.hw.asic.config import ArrayConfig
from qatlab.hw.asic.energy import EnergyTable
from qatlab.hw.asic.simulate import CYCLE_WEIGHTED_FIELDS, SUMMED_FIELDS, AsicReport, LayerRecord, simulate_layer, totals
from qatlab.hw.asic.vector import vector_cost
from qatlab.hw.opgraph import OpInfo, op_infos
from qatlab.hw.workload import group_layers, op_layer


def combine_records(name: str, recs: Sequence[LayerRecord], op_kind: str) -> LayerRecord:
    """One record for GEMMs run back to back: sums, and utilizations weighted by cycles."""
    if not recs:
        raise ValueError(f"op {name!r}: no records to combine")
    d: dict[str, Any] = {k: sum(getattr(r, k) for r in recs) for k in SUMMED_FIELDS}
    cyc = max(sum(r.cycles for r in recs), 1)
    for k in CYCLE_WEIGHTED_FIELDS:
        d[k] = sum(getattr(r, k) * r.cycles for r in recs) / cyc
    d["scalesim_exact"] = all(r.scalesim_exact for r in recs)
    return replace(recs[0], layer=name, op_kind=op_kind, unit="array", groups=len(recs), **d)


def grouped_record(info: OpInfo, cfg: ArrayConfig, table: EnergyTable, batch: int = 1) -> LayerRecord:
    """A grouped conv's record: one group simulated, times the group count (fast path)."""
    g = info.groups
    one = simulate_layer(group_layers(info.op, batch)[0], cfg, table)
    d: dict[str, Any] = {k: getattr(one, k) * g for k in SUMMED_FIELDS}
    return replace(one, layer=info.name, op_kind=info.kind, unit="array", groups=g, **d)


def grouped_record_reference(info: OpInfo, cfg: ArrayConfig, table: EnergyTable, batch: int = 1) -> LayerRecord:
    """The same record with every group simulated on its own (the reference)."""
    recs = [simulate_layer(lay, cfg, table) for lay in group_layers(info.op, batch)]
    return combine_records(info.name, recs, info.kind)


def vector_record(info: OpInfo, cfg: ArrayConfig, table: EnergyTable, batch: int = 1) -> LayerRecord:
    """A non-GEMM op's record. The array is idle meanwhile: its utilizations are 0."""
    c = vector_cost(info, cfg, table, batch)
    passthrough = info.role == "passthrough"
    return LayerRecord(
        layer=info.name,
        total_cycles=max(c.cycles - 1, 0),
        total_cycles_incl_prefetch=max(c.cycles - 1, 0),
        stall_cycles=0,
        overall_util_pct=0.0,
        mapping_eff_pct=0.0,
        compute_util_pct=0.0,
        sram_ifmap_reads=c.sram_reads,
        sram_filter_reads=c.table_reads,
        sram_ofmap_writes=c.sram_writes,
        dram_ifmap_reads=int(round(c.dram_read_bytes)),
        dram_filter_reads=0,
        dram_ofmap_writes=int(round(c.dram_write_bytes)),
        macs=0,
        energy_pj=c.energy_pj,
        latency_s=c.cycles / cfg.freq_hz,
        cycles=c.cycles,
        macs_executed=0,
        sram_ofmap_writes_corrected=c.sram_writes,
        sram_psum_reads=0,
        dram_ofmap_writes_corrected=int(round(c.dram_write_bytes)),
        folds=0,
        pack=1,
        k_eff=0,
        energy_mac_pj=c.e_alu_pj,  # the vector unit's arithmetic
        energy_reg_pj=0.0,
        energy_sram_pj=c.e_sram_pj,
        energy_dram_pj=c.e_dram_pj,
        scalesim_exact=False,  # SCALE-Sim models the array only
        op_kind=info.kind,
        unit="none" if passthrough else "vector",
        groups=1,
        vector_util_pct=(100.0 * c.work / (c.cycles * cfg.lanes)) if c.cycles else 0.0,
    )


def op_record(info: OpInfo, cfg: ArrayConfig, table: EnergyTable, batch: int = 1) -> LayerRecord:
    if info.role == "gemm":
        rec = simulate_layer(op_layer(info.op, batch), cfg, table)
        return replace(rec, op_kind=info.kind)
    if info.role == "grouped":
        return grouped_record(info, cfg, table, batch)
    return vector_record(info, cfg, table, batch)


def simulate_intmodel(
    model: Any,
    config: ArrayConfig,
    batch: int = 1,
    energy: EnergyTable | None = None,
    record: Callable[[OpInfo, ArrayConfig, EnergyTable, int], LayerRecord] | None = None,
) -> AsicReport:
    """Simulate a converted integer model (``qatlab.intmodel`` IntModel) op by op.

    One record per op, every op in the totals: conv and linear on the array (bit
    widths and weight density included; with ``config.pack`` / ``config.sparsity`` the
    trained bit widths and N:M patterns change the counts), grouped convs one GEMM per
    group, the other ops on the vector unit, pass-through ops as empty rows.
    ``record`` replaces :func:`op_record` for a cost model built on it (sub-8-bit packing).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    infos = op_infos(model)
    if not infos:
        raise ValueError("simulate_intmodel: the model has no ops")
    table = energy or EnergyTable(config.node_nm, config.vdd)
    records = [(record or op_record)(i, config, table, batch) for i in infos]
    t = totals(records, config, batch)
    t["array_cycles"] = sum(r.cycles for r in records if r.unit == "array")
    t["vector_cycles"] = sum(r.cycles for r in records if r.unit == "vector")
    t["vector_lanes"] = config.lanes
    return AsicReport(config, records, t)
