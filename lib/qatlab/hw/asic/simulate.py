"""Run a layer list on an :class:`ArrayConfig`: per-layer records and totals.

The records carry SCALE-Sim's report columns under the names docs/cli.md fixes, plus ours
(MACs, energy, latency, corrected counts). ``scalesim_exact`` says whether every
SCALE-Sim-named figure of the record is SCALE-Sim 3.0.0's: true for every layer SCALE-Sim
can run (closed forms, and SCALE-Sim's buffers replayed where none exists: see
:mod:`qatlab.hw.asic.memory`); false only with operand packing or sparsity skipping,
which have no SCALE-Sim counterpart (their DRAM counts are then estimates).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Callable, NamedTuple

from qatlab.hw.asic import calc_reads
from qatlab.hw.asic import memory as mem
from qatlab.hw.asic.calc_reads import ifmap_is_block_stream
from qatlab.hw.asic.config import ArrayConfig, ConfigError
from qatlab.hw.asic.dataflow import ArrayMapping, ceil_div
from qatlab.hw.asic.energy import EnergyTable
from qatlab.hw.limits import (
    ASIC_BYTES_PER_REPLAYED_READ,
    MAX_ASIC_VECTOR_REPLAY_REQUESTS,
    available_memory,
    check_asic_mappings,
    check_asic_replay,
    require_memory,
)
from qatlab.hw.workload import Layer

if TYPE_CHECKING:  # the replays need numpy; they are imported only when a layer needs one
    from qatlab.hw.asic.trace import IfmapAddresses

# Accumulators are int32; partial sums travel and are stored at this width.
ACC_BITS = 32


@dataclass(frozen=True)
class LayerRecord:
    """One layer's figures. The first block mirrors SCALE-Sim's reports, row for row."""

    layer: str
    total_cycles: int  # SCALE-Sim "Total Cycles": index of the last cycle (cycles - 1), stalls included
    total_cycles_incl_prefetch: int  # last ofmap DRAM write minus the first operand DRAM read
    stall_cycles: int
    overall_util_pct: float
    mapping_eff_pct: float
    compute_util_pct: float
    sram_ifmap_reads: int
    sram_filter_reads: int
    sram_ofmap_writes: int  # SCALE-Sim's count (os: inflated by rows+cols per fold)
    dram_ifmap_reads: int
    dram_filter_reads: int
    dram_ofmap_writes: int  # SCALE-Sim's count (early-closed lines counted full)
    macs: int  # the layer's MACs (dense: M*N*K)
    energy_pj: float
    latency_s: float  # cycles / clock; DRAM prefetch assumed hidden by double buffering
    # ---- ours -------------------------------------------------------------------------
    cycles: int  # clock cycles of the layer: total_cycles + 1
    macs_executed: int  # MACs the array performs (zero weights skipped when sparsity is on)
    sram_ofmap_writes_corrected: int  # output / partial-sum words actually written
    sram_psum_reads: int  # partial sums read back across row folds (ws/is); SCALE-Sim omits them
    dram_ofmap_writes_corrected: int  # words actually written back to DRAM
    folds: int
    pack: int  # MACs per cell per cycle (operand packing)
    k_eff: int  # reduction length the array runs (after skipping and packing)
    energy_mac_pj: float
    energy_reg_pj: float
    energy_sram_pj: float
    energy_dram_pj: float
    scalesim_exact: bool
    # ---- the IntModel op the row stands for (defaults: a topology layer on the array) ----
    op_kind: str = ""
    unit: str = "array"  # array | vector (the unit beside the array) | none (pass-through)
    groups: int = 1  # GEMMs the row sums: a grouped conv runs one per group
    vector_util_pct: float = 0.0  # lane-cycles with work / (cycles x lanes) of the vector unit

    def as_dict(self) -> dict:
        return asdict(self)


RECORD_FIELDS = [f.name for f in fields(LayerRecord)]


@dataclass(frozen=True)
class AsicReport:
    config: ArrayConfig
    layers: list[LayerRecord]
    totals: dict

    def as_dict(self) -> dict:
        return {"layers": [r.as_dict() for r in self.layers], "totals": self.totals}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent)

    def to_csv(self) -> str:
        """One row per layer (RECORD_FIELDS order), then a ``TOTAL`` row."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=RECORD_FIELDS, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in self.layers:
            w.writerow(r.as_dict())
        w.writerow({k: self.totals.get(k, "") for k in RECORD_FIELDS} | {"layer": "TOTAL"})
        return buf.getvalue()


# ---- layer preparation: packing and sparsity ----------------------------------------


def pack_factor(layer: Layer, cfg: ArrayConfig) -> int:
    """MACs per cell per cycle: how many operand pairs share one 8-bit datapath slot."""
    fits = max(1, 8 // max(layer.w_bits, layer.a_bits))
    if cfg.pack == 1:
        return 1
    if cfg.pack == 0:
        return min(cfg.pack_max, fits)
    return min(cfg.pack, fits)


def sparse_length(k: int, n: int, m: int) -> int:
    """Non-zero positions of a length-``k`` axis with N:M sparsity (first n of every m)."""
    return n * (k // m) + min(k % m, n)


def reduction_length(layer: Layer, cfg: ArrayConfig) -> tuple[int, int]:
    """(K after zero-weight skipping, K the array runs after packing)."""
    n, m = layer.sparsity
    ks = sparse_length(layer.K, n, m) if cfg.sparsity and (n, m) != (1, 1) else layer.K
    return ks, ceil_div(ks, pack_factor(layer, cfg))


def scalesim_out(size: int, filt: int, stride: int) -> int:
    """Outputs along one axis as SCALE-Sim counts them: ``ceil((size - filt + stride) / stride)``.

    That is one more than a real unpadded convolution (``(size - filt) // stride + 1``)
    whenever the stride does not divide ``size - filt``: SCALE-Sim adds a last window
    that runs off the input, whose outside taps it marks invalid (no read) but still
    counts as cycles, SRAM requests and outputs. A defect; we reproduce it in the
    SCALE-Sim-named fields and use the real geometry for ours.
    """
    return -(-(size - filt + stride) // stride)


def scalesim_m(layer: Layer) -> int:
    """SCALE-Sim's output-pixel count M for ``layer`` (see :func:`scalesim_out`)."""
    if layer.kind == "gemm":
        return layer.M
    return (
        layer.batch
        * scalesim_out(layer.ifmap_h, layer.filter_h, layer.stride_h)
        * scalesim_out(layer.ifmap_w, layer.filter_w, layer.stride_w)
    )


def ifmap_unique_words(layer: Layer, k_pack: int, scalesim: bool = False) -> int:
    """Distinct ifmap words the layer reads (no padding: strided windows may skip pixels).

    With ``scalesim=True`` the windows are SCALE-Sim's (:func:`scalesim_out`), whose last
    one may reach pixels a real convolution never reads.
    """
    if layer.kind == "gemm":
        return layer.M * ceil_div(layer.K, k_pack)

    def covered(size: int, filt: int, stride: int) -> int:
        n = scalesim_out(size, filt, stride) if scalesim else (size - filt) // stride + 1
        # Windows [o*stride, o*stride + filt) clipped to the input: each adds min(stride,
        # filt) new positions, the last adds what is left of the input (nothing when
        # SCALE-Sim's extra window starts past the input's end, as a stride > filter can).
        last = (n - 1) * stride
        return (n - 1) * min(stride, filt) + max(0, min(filt, size - last))

    return (
        layer.batch
        * covered(layer.ifmap_h, layer.filter_h, layer.stride_h)
        * covered(layer.ifmap_w, layer.filter_w, layer.stride_w)
        * ceil_div(layer.channels, k_pack)
    )


def check_sram_holds_fold(m: ArrayMapping, cfg: ArrayConfig, layer: Layer) -> None:
    """Each SRAM must hold one fold's share of its operand, or nothing can run.

    The operand that stays in the array (outputs for os, weights for ws, inputs for is)
    needs one whole tile (used rows x used columns); the streamed ones one array edge.
    """
    r, c = min(m.R, m.Sr), min(m.C, m.Sc)
    tile = r * c
    need = {
        "os": {"ofmap": tile, "ifmap": r, "filter": c},
        "ws": {"filter": tile, "ifmap": r, "ofmap": c},
        "is": {"ifmap": tile, "filter": r, "ofmap": c},
    }[m.dataflow]
    for op, words in need.items():
        kb = getattr(cfg, f"{op}_sram_kb")
        have = kb * 1024
        if have < words:
            what = f"one {r}x{c} tile" if words == tile else f"one array edge of {words} words"
            raise ConfigError(
                f"{cfg.where(f'{op}_sram_kb')}: field '{op}_sram_kb' = {kb} kB ({have} words) cannot hold "
                f"{what} of a {m.dataflow} fold of layer {layer.name!r} ({words} words)"
            )


# ---- one layer -------------------------------------------------------------------------


class _Memory(NamedTuple):
    """What the memory models say about one mapping."""

    stall: int
    total_cycles: int
    incl_prefetch: int
    dram_ifmap: int
    dram_filter: int
    dram_ofmap: int  # SCALE-Sim's count
    dram_ofmap_words: int  # true words
    exact: bool
    replayed: bool = False  # some figure came from replaying SCALE-Sim's buffers


def _memory(
    m: ArrayMapping,
    u_ifmap: int,
    cfg: ArrayConfig,
    addresses: Callable[[], IfmapAddresses] | None,
    replay: bool,
    ifmap_blocks: bool = True,
    name: str = "",
    available: int | None = None,
) -> _Memory:
    """Memory figures of one mapping.

    Where the count is not trivially the operand's size, CALC-mode DRAM reads come from
    the block-stream closed form (:mod:`qatlab.hw.asic.calc_reads`); an ifmap that is not
    a block stream (``ifmap_blocks`` false: overlapping convolution windows) is counted
    by arithmetic on folds and taps (os) or replayed, and every USER-mode operand that
    overflows its buffer is replayed, when ``addresses`` (which makes the ifmap's address
    map) is given, and estimated otherwise (sparsity skipping, our real-geometry figures). ``replay`` (``dram_model="exact"``, the reference): replay
    every operand the trivial count does not cover instead of using the closed form.
    ``available``: the free bytes the memory guard assumes (default: read from the system).
    """
    isz, fsz, osz = cfg.ifmap_sram_kb * 1024, cfg.filter_sram_kb * 1024, cfg.ofmap_sram_kb * 1024
    # SCALE-Sim drains outputs at one array row per cycle in CALC mode, at the user's
    # first Bandwidth figure in USER mode.
    ofmap_bw = cfg.cols if cfg.bandwidth_mode == "CALC" else cfg.bandwidth[0]
    check_asic_replay(name, mem.ofmap_replay_steps(m, osz, ofmap_bw), "the replay of the ofmap write buffer's drains")
    wb = mem.ofmap_write_buffer(m, osz, ofmap_bw)
    u_filter = m.K * m.N
    passes = mem.operand_passes(m)
    read_stall = 0
    replayed = False
    if cfg.bandwidth_mode == "CALC":
        start_i = mem.calc_dram_start(u_ifmap, m.first_ifmap_row, isz)
        start_f = mem.calc_dram_start(u_filter, m.first_filter_row, fsz)
        dram_i, exact_i = mem.calc_dram_reads(u_ifmap, m.sram_ifmap_reads, passes["ifmap"], 0, 1, isz)
        block = m.K * min(m.C, m.N)  # os: a column fold's filter block, re-read for each row fold
        reps = m.row_fold if m.dataflow == "os" else 1
        dram_f, exact_f = mem.calc_dram_reads(u_filter, m.sram_filter_reads, passes["filter"], block, reps, fsz)
        if not exact_f:
            replayed = replay
            if replay:
                from qatlab.hw.asic.trace import calc_filter_reads_replay

                dram_f = calc_filter_reads_replay(m, fsz)
            else:
                dram_f = calc_reads.calc_filter_reads(m, fsz)
            exact_f = True
        if not exact_i:
            if addresses is not None and (replay or not ifmap_blocks):
                from qatlab.hw.asic.trace import calc_ifmap_reads_replay

                # One pass is generated and sorted, every pass compared: refuse what would
                # exhaust the memory or run for minutes, before numpy is asked for it.
                pass_words = m.M * m.K
                require_memory(
                    ASIC_BYTES_PER_REPLAYED_READ * pass_words,
                    f"layer {name!r}: the replay of its ifmap read window ({pass_words} requests a pass)",
                    available,
                    hint="shrink the layer, or enlarge the ifmap SRAM past the ifmap's size",
                )
                requests = pass_words * (1 if m.dataflow == "is" else m.col_fold)
                check_asic_replay(name, requests, "the replay of its ifmap read window (requests)", MAX_ASIC_VECTOR_REPLAY_REQUESTS, 1e8)
                if replay or m.dataflow != "os":
                    dram_i = calc_ifmap_reads_replay(m, addresses(), isz)
                else:  # os: by arithmetic on folds and filter taps, no request visited
                    from qatlab.hw.asic.trace import os_ifmap_reads_by_folds

                    dram_i = os_ifmap_reads_by_folds(m, addresses(), isz)
                exact_i, replayed = True, True
            elif ifmap_blocks:
                dram_i, exact_i = calc_reads.calc_ifmap_reads(m, u_ifmap, isz), True
    else:
        ibw, fbw = cfg.ifmap_bank_bandwidth, cfg.filter_bank_bandwidth
        start_i = -ceil_div(mem.user_first_fill(isz, m.ifmap_prefetch_entries, ibw), ibw)
        start_f = -ceil_div(mem.user_first_fill(fsz, m.filter_prefetch_entries, fbw), fbw)
        exact_i = mem.user_fits(isz, m.M * m.K)
        exact_f = mem.user_fits(fsz, m.K * m.N)
        stalls = [0]
        if exact_i:
            dram_i = mem.user_first_fill(isz, m.ifmap_prefetch_entries, ibw)
        else:
            dram_i, st = mem.user_read_estimate(isz, m.ifmap_prefetch_entries, ibw, passes["ifmap"], m.compute_rows)
            stalls.append(st)
        if exact_f:
            dram_f = mem.user_first_fill(fsz, m.filter_prefetch_entries, fbw)
        else:
            reps = m.row_fold if m.dataflow == "os" and m.K * m.C * 2 > fsz else 1
            dram_f, st = mem.user_read_estimate(fsz, m.filter_prefetch_entries, fbw, passes["filter"] * reps, m.compute_rows)
            stalls.append(st)
        read_stall = max(stalls)  # estimate (0 when both fit: then exact)
        if addresses is not None and not (exact_i and exact_f):
            from qatlab.hw.asic.user_replay import user_replay, user_replay_events

            # SCALE-Sim's USER-mode buffers over every demand row (exact): by default from
            # miss to miss and drain to drain; with dram_model="exact" row by row, word by
            # word (the reference).
            steps = m.sram_ifmap_reads + m.sram_filter_reads + m.compute_rows
            check_asic_replay(name, steps, "the USER-mode replay of SCALE-Sim's read buffers (requested words and rows)")
            r = (user_replay if replay else user_replay_events)(m, addresses(), (isz, fsz, osz), (ibw, fbw, ofmap_bw))
            return _Memory(
                stall=int(r["stall"]),
                total_cycles=int(r["total_cycles"]),
                incl_prefetch=int(r["ofmap_stop"] - min(start_i, start_f)),
                dram_ifmap=int(r["dram_ifmap"]),
                dram_filter=int(r["dram_filter"]),
                dram_ofmap=int(r["dram_ofmap"]),
                dram_ofmap_words=int(wb.dram_words),
                exact=True,
                replayed=True,
            )
    stall = wb.stall_cycles + read_stall
    # Read stalls (estimated) delay the final drain by as much.
    incl = int(wb.dram_stop + read_stall - min(start_i, start_f))
    return _Memory(
        stall=int(stall),
        total_cycles=int(m.compute_rows - 1 + stall),
        incl_prefetch=incl,
        dram_ifmap=int(dram_i),
        dram_filter=int(dram_f),
        dram_ofmap=int(wb.dram_writes),
        dram_ofmap_words=int(wb.dram_words),
        exact=bool(exact_i and exact_f),
        replayed=replayed,
    )


def simulate_layer(layer: Layer, cfg: ArrayConfig, table: EnergyTable | None = None, *, available: int | None = None) -> LayerRecord:
    """One layer's record; see the module docstring for what is exact.

    ``available``: bytes the memory guards may assume free (default: read from the
    system for each check).
    """
    table = table or EnergyTable(cfg.node_nm, cfg.vdd)
    k_pack = pack_factor(layer, cfg)
    k_sparse, k_eff = reduction_length(layer, cfg)
    transformed = k_pack != 1 or k_sparse != layer.K

    # Two geometries when they differ: SCALE-Sim's (its named fields) and the real one (ours).
    m = ArrayMapping(cfg.dataflow, cfg.rows, cfg.cols, layer.M, layer.N, k_eff)
    m_ss = m if scalesim_m(layer) == layer.M else ArrayMapping(cfg.dataflow, cfg.rows, cfg.cols, scalesim_m(layer), layer.N, k_eff)
    check_sram_holds_fold(m_ss, cfg, layer)
    check_asic_mappings(
        layer.name, (m, m_ss), dram_exact=cfg.dram_model == "exact", user_mode=cfg.bandwidth_mode == "USER", available=available
    )

    def unique(scalesim: bool) -> int:
        u = ifmap_unique_words(layer, k_pack, scalesim)
        if k_sparse != layer.K:  # kept share of the reduction axis: an estimate, the pattern's
            u = ceil_div(u * k_sparse, layer.K)  # overlap with the windows is not tracked
        return u

    def addresses() -> IfmapAddresses:
        from qatlab.hw.asic.trace import IfmapAddresses

        if layer.kind == "gemm":
            return IfmapAddresses(layer.M, layer.K, 1, layer.K, 1, 1, 1, gemm_k=k_eff)
        return IfmapAddresses(
            layer.ifmap_h,
            layer.ifmap_w,
            layer.filter_h,
            layer.filter_w,
            ceil_div(layer.channels, k_pack),
            layer.stride_h,
            layer.stride_w,
        )

    # SCALE-Sim-named fields: SCALE-Sim's geometry and, with dram_model="exact", its
    # buffers replayed. Ours: the real geometry and the closed form (which also corrects
    # SCALE-Sim's USER-mode stall arithmetic), whatever dram_model says.
    replay = cfg.dram_model == "exact"
    # Skipped positions break the window geometry: no replay, DRAM stays an estimate.
    replayable = addresses if k_sparse == layer.K else None
    blocks = ifmap_is_block_stream(layer)
    mm_ss = _memory(m_ss, unique(True), cfg, replayable, replay, blocks, layer.name, available)
    # Ours never replays, so that energy and our cycles do not depend on dram_model.
    mm = mm_ss if (m_ss is m and not mm_ss.replayed) else _memory(m, unique(False), cfg, None, False, blocks, layer.name, available)
    cycles = mm.total_cycles + 1
    num_compute = m_ss.M * m_ss.N * m_ss.K  # SCALE-Sim's "compute" count
    overall = (num_compute * 100) / (max(mm_ss.total_cycles, 1) * cfg.num_pes)

    # ---- energy (real geometry) -----------------------------------------------------------
    macs_exec = layer.M * layer.N * k_sparse
    e_mac = macs_exec * table.mac(layer.w_bits, layer.a_bits)
    pe_cycles = m.M * m.N * m.K  # cell-cycles with work (k MACs each when packed)
    if m.dataflow == "os":  # both operands move on; the sum stays
        e_reg = pe_cycles * 2 * table.register(8)
    else:  # one operand and the 32-bit partial sum move on; the other stays
        e_reg = pe_cycles * (table.register(8) + table.register(ACC_BITS))
    e_reg += m.folds * min(m.R, m.Sr) * min(m.C, m.Sc) * table.register(8)  # stationary tile loads
    outputs = m.M * m.N
    psum_writes = m.sram_ofmap_writes_corrected - outputs
    e_sram = (
        m.sram_ifmap_reads * table.sram(cfg.ifmap_sram_kb)
        + m.sram_filter_reads * table.sram(cfg.filter_sram_kb)
        + outputs * table.sram(cfg.ofmap_sram_kb)
        + (psum_writes + m.sram_psum_reads) * table.sram(cfg.ofmap_sram_kb, ACC_BITS)
    )
    meta_bits = 0
    if k_sparse != layer.K:
        # Each kept weight carries the index of its position within its block of m.
        meta_bits = max(1, math.ceil(math.log2(layer.sparsity[1])))
        e_sram += m.sram_filter_reads * table.sram(cfg.filter_sram_kb, meta_bits)
    dram_bytes = mm.dram_ifmap + mm.dram_filter + mm.dram_ofmap_words + mm.dram_filter * meta_bits / 8
    e_dram = dram_bytes * table.dram_per_byte()
    energy = e_mac + e_reg + e_sram + e_dram

    return LayerRecord(
        layer=layer.name,
        total_cycles=mm_ss.total_cycles,
        total_cycles_incl_prefetch=mm_ss.incl_prefetch,
        stall_cycles=mm_ss.stall,
        overall_util_pct=overall,
        mapping_eff_pct=m_ss.mapping_eff_pct,
        compute_util_pct=m_ss.compute_util_pct,
        sram_ifmap_reads=m_ss.sram_ifmap_reads,
        sram_filter_reads=m_ss.sram_filter_reads,
        sram_ofmap_writes=m_ss.sram_ofmap_writes_scalesim,
        dram_ifmap_reads=mm_ss.dram_ifmap,
        dram_filter_reads=mm_ss.dram_filter,
        dram_ofmap_writes=mm_ss.dram_ofmap,
        macs=layer.macs,
        energy_pj=energy,
        latency_s=cycles / cfg.freq_hz,
        cycles=cycles,
        macs_executed=macs_exec,
        sram_ofmap_writes_corrected=m.sram_ofmap_writes_corrected,
        sram_psum_reads=m.sram_psum_reads,
        dram_ofmap_writes_corrected=mm.dram_ofmap_words,
        folds=m.folds,
        pack=k_pack,
        k_eff=k_eff,
        energy_mac_pj=e_mac,
        energy_reg_pj=e_reg,
        energy_sram_pj=e_sram,
        energy_dram_pj=e_dram,
        scalesim_exact=bool(mm_ss.exact and not transformed),
    )


# Record fields that add up over layers (or over the GEMMs of one grouped op); the
# utilizations instead average weighted by cycles.
SUMMED_FIELDS = (
    "total_cycles",
    "total_cycles_incl_prefetch",
    "stall_cycles",
    "sram_ifmap_reads",
    "sram_filter_reads",
    "sram_ofmap_writes",
    "dram_ifmap_reads",
    "dram_filter_reads",
    "dram_ofmap_writes",
    "macs",
    "energy_pj",
    "latency_s",
    "cycles",
    "macs_executed",
    "sram_ofmap_writes_corrected",
    "sram_psum_reads",
    "dram_ofmap_writes_corrected",
    "folds",
    "energy_mac_pj",
    "energy_reg_pj",
    "energy_sram_pj",
    "energy_dram_pj",
)
CYCLE_WEIGHTED_FIELDS = ("overall_util_pct", "mapping_eff_pct", "compute_util_pct")


def totals(records: list[LayerRecord], cfg: ArrayConfig, batch: int = 1) -> dict:
    """Network totals: sums, cycle-weighted utilizations, energy per inference, TOPS/W."""
    t: dict = {k: sum(getattr(r, k) for r in records) for k in SUMMED_FIELDS}
    t["layer"] = "TOTAL"
    cyc = max(t["cycles"], 1)
    t["overall_util_pct"] = 100 * sum(r.overall_util_pct / 100 * r.cycles for r in records) / cyc
    t["mapping_eff_pct"] = sum(r.mapping_eff_pct * r.cycles for r in records) / cyc
    t["compute_util_pct"] = sum(r.compute_util_pct * r.cycles for r in records) / cyc
    t["scalesim_exact"] = all(r.scalesim_exact for r in records)
    t["layers"] = len(records)
    # Two operations (multiply, add) per MAC; operations per pJ = 1e12 op/J = TOPS/W.
    t["tops_per_w"] = 2 * t["macs"] / t["energy_pj"] if t["energy_pj"] else 0.0
    t["energy_pj_per_inference"] = t["energy_pj"] / batch
    t["inferences_per_s"] = batch / t["latency_s"] if t["latency_s"] else 0.0
    t["freq_mhz"] = cfg.freq_mhz
    t["node_nm"] = cfg.node_nm
    return t


# A layer's fields that its record depends on: all that take part in its equality but its name.
_LAYER_SHAPE = tuple(f.name for f in fields(Layer) if f.compare and f.name != "name")


def simulate(layers: list[Layer], config: ArrayConfig, energy: EnergyTable | None = None) -> AsicReport:
    """Simulate ``layers`` (in order) on ``config``: one record per layer plus totals."""
    if not layers:
        raise ValueError("simulate: no layers")
    table = energy or EnergyTable(config.node_nm, config.vdd)
    # The memory guards read the system's free memory once for the whole network (the
    # figure cannot move much in the milliseconds a network takes), and a layer shape
    # that repeats (ResNet's blocks) is simulated once: a record depends on the layer's
    # fields, its name aside.
    available = available_memory()
    done: dict[tuple, LayerRecord] = {}
    records = []
    for lay in layers:
        shape = tuple(getattr(lay, f) for f in _LAYER_SHAPE)
        if shape not in done:
            done[shape] = simulate_layer(lay, config, table, available=available)
        records.append(replace(done[shape], layer=lay.name))
    batch = max(lay.batch for lay in layers)
    return AsicReport(config, records, totals(records, config, batch))
