"""The vector unit beside the systolic array: every IntModel op that is not a GEMM.

Accelerators built around a matrix unit run the rest of a network on a small SIMD
post-processing unit fed from the on-chip buffers: TPU v1's activation, normalization
and pooling units sit after the accumulators and take the array's full output width
per cycle (N. P. Jouppi et al., "In-Datacenter Performance Analysis of a Tensor
Processing Unit", ISCA 2017, sec. 2 and fig. 1); NVDLA's SDP (single data point:
bias, elementwise add/mul, activation lookup table, requantization) and PDP (planar
data processing: max/average pooling with a line buffer) are the same idea
(NVDLA Open Source Project, "Hardware Architectural Specification", nvdla.org/hw/v1/hwarch.html).

Our model of that unit (``ArrayConfig.vector_lanes`` lanes, default one per array
column as in TPU v1):

* **Cycles.** A lane does one unit of work per cycle, fully pipelined: elementwise
  ops (quantize, relu, clamp, lut, add, mul) one output element; a ``cat`` one element
  of each input that needs requantization (inputs already on the output's grid are
  written in place by their producers: no work); pooling and ``mean`` one input tap
  (accumulate or compare), the final requantization of each output pipelined behind
  it. ``cycles = ceil(batch · work / lanes)``. The unit runs when the array does not
  (ops run one after another, as the records are summed); pass-through ops
  (flatten, reshape, permute, slice) only re-index: 0 cycles, no traffic.
* **SRAM traffic** (words of the value's bit width): every input element read once
  (pooling windows reuse rows through the unit's line buffer, as NVDLA's PDP does; a
  broadcast operand is read once and held), every output element written once; a
  ``lut`` also reads its table (a ``2^bits``-entry ROM) once per output.
* **DRAM traffic.** As for the GEMM layers (SCALE-Sim's per-layer view), an op reads
  its operands from DRAM and writes its result back: bytes = elements · bits / 8.
* **Energy** (M. Horowitz, ISSCC 2014, 45 nm table, as :mod:`.energy` cites it,
  scaled to the node): a requantization is a 32-bit multiply and a 32-bit add
  (gemmlowp's fixed-point multiplier, then the zero point); saturation two 8-bit
  compares (an 8-bit add each); an accumulate a 32-bit add; a max or a clamp bound a
  compare; ``mul``'s product the operand-width multiply of :func:`.energy.mult_pj`;
  a ``lut`` read an SRAM access of the table's size; SRAM and DRAM words as for the
  array (:meth:`.EnergyTable.sram`, :meth:`.EnergyTable.dram_per_byte`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qatlab.hw.asic.config import ArrayConfig
from qatlab.hw.asic.energy import INT8_ADD_PJ, INT32_ADD_PJ, INT32_MULT_PJ, EnergyTable, mult_pj
from qatlab.hw.opgraph import OpInfo, UnsupportedOpError

# Per-element arithmetic at 45 nm, pJ (Horowitz's points; see the module docstring).
REQUANT_PJ = INT32_MULT_PJ + INT32_ADD_PJ
SAT_PJ = 2 * INT8_ADD_PJ
COMPARE_PJ = INT8_ADD_PJ


@dataclass(frozen=True)
class VectorCost:
    """One op on the vector unit, for the whole batch."""

    work: int  # lane-cycles with work
    cycles: int
    sram_reads: int  # operand words
    sram_writes: int
    table_reads: int  # lut ROM reads
    dram_read_bytes: float
    dram_write_bytes: float
    e_alu_pj: float
    e_sram_pj: float
    e_dram_pj: float

    @property
    def energy_pj(self) -> float:
        return self.e_alu_pj + self.e_sram_pj + self.e_dram_pj


def _alu_pj_45nm(info: OpInfo) -> float:
    """Arithmetic energy of one batch item at 45 nm (pJ)."""
    k, n = info.kind, info.out_elems
    if k == "quantize":
        return n * (REQUANT_PJ + SAT_PJ)  # x · (1/s) in fixed point, + z, saturate
    if k == "relu":
        return n * COMPARE_PJ
    if k == "clamp":
        return n * 2 * COMPARE_PJ
    if k == "lut":
        return 0.0  # the table read is SRAM energy
    if k == "add":
        return n * (2 * REQUANT_PJ + INT32_ADD_PJ + SAT_PJ + _clamp_pj(info))
    if k == "mul":
        a, b = info.in_bits
        return n * (mult_pj(a, b) + REQUANT_PJ + SAT_PJ + _clamp_pj(info))
    if k == "cat":
        return sum(info.in_elems(i) for i in info.requantized_inputs()) * (REQUANT_PJ + SAT_PJ)
    if k in ("avgpool", "mean"):
        return info.reduction_taps() * INT32_ADD_PJ + n * (REQUANT_PJ + SAT_PJ)
    if k == "maxpool":
        return info.reduction_taps() * COMPARE_PJ
    raise UnsupportedOpError(f"op {info.name!r}: kind {info.kind!r} does not run on the vector unit")


def _clamp_pj(info: OpInfo) -> float:
    a = info.op.attrs
    return (2 * COMPARE_PJ if a.get("clamp") is not None else 0.0) + (COMPARE_PJ if a.get("relu") else 0.0)


def lane_work(info: OpInfo) -> int:
    """Lane-cycles of work of one batch item (see the module docstring)."""
    if info.role == "passthrough":
        return 0
    if info.kind in ("avgpool", "maxpool", "mean"):
        return info.reduction_taps()
    if info.kind == "cat":
        return sum(info.in_elems(i) for i in info.requantized_inputs())
    return info.out_elems


def _traffic(info: OpInfo) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(words, bits) read and written by one batch item."""
    if info.role == "passthrough":
        return [], []
    if info.kind == "cat":
        idx = info.requantized_inputs()
        return [(info.in_elems(i), info.in_bits[i]) for i in idx], [(sum(info.in_elems(i) for i in idx), info.out_bits)]
    reads = [(info.in_elems(i), b) for i, b in enumerate(info.in_bits)]
    return reads, [(info.out_elems, info.out_bits)]


def table_entries(info: OpInfo) -> int:
    if info.kind != "lut":
        return 0
    q = info.in_qs[0]
    if q is None:
        raise UnsupportedOpError(f"op {info.name!r}: a lut reads codes, not the float input")
    return int(q.qmax - q.qmin + 1)


def vector_cost(info: OpInfo, cfg: ArrayConfig, table: EnergyTable, batch: int = 1) -> VectorCost:
    """The vector unit's cycles, traffic and energy for ``info`` over ``batch`` items."""
    if info.role not in ("vector", "passthrough"):
        raise UnsupportedOpError(f"op {info.name!r} ({info.role}) runs on the array, not the vector unit")
    work = batch * lane_work(info)
    cycles = math.ceil(work / cfg.lanes)
    reads, writes = _traffic(info)
    f = table.factor
    e_sram = batch * (
        sum(n * table.sram(cfg.ifmap_sram_kb, b) for n, b in reads) + sum(n * table.sram(cfg.ofmap_sram_kb, b) for n, b in writes)
    )
    entries = table_entries(info)
    table_reads = batch * info.out_elems if entries else 0
    table_bytes = entries * info.out_bits / 8
    if entries:
        e_sram += table_reads * table.sram(table_bytes / 1024, info.out_bits)
    rd = batch * sum(n * b for n, b in reads) / 8 + table_bytes  # the table is loaded once
    wr = batch * sum(n * b for n, b in writes) / 8
    e_alu = 0.0 if info.role == "passthrough" else batch * _alu_pj_45nm(info) * f
    return VectorCost(
        work=work,
        cycles=cycles,
        sram_reads=batch * sum(n for n, _ in reads),
        sram_writes=batch * sum(n for n, _ in writes),
        table_reads=table_reads,
        dram_read_bytes=rd,
        dram_write_bytes=wr,
        e_alu_pj=e_alu,
        e_sram_pj=e_sram,
        e_dram_pj=(rd + wr) * table.dram_per_byte(),
    )
