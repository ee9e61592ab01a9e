"""Per-op hardware cost tables: every op priced at every joint value of its knobs.

Each op of the reference IntModel (the network converted once, at any uniform bits)
is re-priced by the simulators with its bit widths replaced: a conv/linear at each
``(w_bits, a_bits)`` of its layer's knobs, any other op at each value of the knobs of
the values it reads and writes (a pool, an add, a lookup table read and write at
their quantizers' widths). Nothing is estimated: a configuration's totals are the
simulators' own per-op figures summed in op order, so the cost predicted for a
configuration equals :func:`simulate_costs` of the IntModel trained with it.

* ASIC: :func:`qatlab.hw.asic.packing.packed_record` (sub-8-bit packing) on
  ``asic_config``: energy (pJ) and cycles.
* FPGA: the matrix unit of every conv/linear (:func:`qatlab.hw.fpga.analyze` of the
  workload layers, no trained parameters, no FIFO sizing) at one folding — given, or
  the one the folding search picks for the uniform W8A8 network — LUT, DSP, BRAM18,
  and each layer's initiation interval in cycles (the frame rate's max constraint).
* weight bytes (``numel · w_bits / 8``) and BOPs (``MACs · w_bits · a_bits``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from qatlab.hw.asic import ArrayConfig, EnergyTable
from qatlab.hw.asic.packing import packed_config, packed_record
from qatlab.hw.fpga import LayerFolding, analyze
from qatlab.hw.opgraph import OpInfo, op_infos
from qatlab.hw.workload import Layer, from_intmodel, op_layer

from .errors import MixedPrecisionError
from .problem import Factor, Problem
from .space import DecisionSpace


@dataclass(frozen=True)
class FpgaTarget:
    device: str = "ZCU104"
    folding: Mapping[str, LayerFolding] | None = None  # None: searched for uniform W8A8
    target_fps: float | None = None  # the W8A8 search's target (None: fastest that fits)


@dataclass(frozen=True)
class CostTables:
    """Factors without sensitivities, and what they were priced on."""

    space: DecisionSpace
    factors: tuple[Factor, ...]
    asic: ArrayConfig | None
    fpga: FpgaTarget | None
    folding: Mapping[str, LayerFolding] = field(default_factory=dict)
    clock_mhz: float | None = None
    layer_ops: Mapping[str, str] = field(default_factory=dict)  # IntModel op -> layer name


def _actq(q: Any, bits: int) -> Any:
    """``q`` re-ranged to ``bits`` (signedness and scale kept)."""
    if q.qmin < 0:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    return replace(q, qmin=lo, qmax=hi, zero_point=min(max(q.zero_point, lo), hi))


def _with_layer_bits(info: OpInfo, w: int, a: int) -> OpInfo:
    op = replace(info.op, attrs={**info.op.attrs, "w_bits": w, "a_bits": a})
    return replace(info, op=op)


def _with_value_bits(info: OpInfo, in_bits: Sequence[int | None], out_bits: int | None) -> OpInfo:
    qs = tuple(q if b is None or q is None else _actq(q, b) for q, b in zip(info.in_qs, in_bits))
    op = info.op if out_bits is None else replace(info.op, out_q=_actq(info.op.out_q, out_bits))
    return replace(info, op=op, in_qs=qs)


def _layer_at(layer: Layer, w: int, a: int) -> Layer:
    return replace(layer, w_bits=w, a_bits=a)


def _fpga_rows(layers: list[Layer], target: FpgaTarget, folding: Mapping[str, LayerFolding] | None) -> tuple[Any, dict]:
    if folding is None:
        rep = analyze(layers, target.device, target_fps=target.target_fps, schedule=False)
    else:
        rep = analyze(layers, target.device, folding=dict(folding), schedule=False)
    return rep, {r.layer: r for r in rep.layers}


FPGA_FIELDS = (("fpga_lut", "lut"), ("fpga_dsp", "dsp"), ("fpga_bram18", "bram18"))


def _fpga_factors(infos: list[OpInfo], space: DecisionSpace, fpga: FpgaTarget, batch: int) -> tuple[dict, float, list[Factor]]:
    """One factor per matrix unit. FINN's thresholds hold the *next* layer's input
    codes, so a unit's cost depends on its layer's knobs and the next layer's input
    knob: each unit is priced beside its successor at every joint value."""
    by_op = {s.op: s for s in space.layers}
    base = [(by_op[i.name], op_layer(i.op, batch)) for i in infos if i.name in by_op]
    rep, _ = _fpga_rows([_layer_at(lay, 8, 8) for _, lay in base], fpga, fpga.folding)
    folding, clock = dict(rep.folding), float(rep.clock_mhz)
    factors = []
    for j, (slot, lay) in enumerate(base):
        nxt = base[j + 1] if j + 1 < len(base) else None
        scope = [slot.w_knob, slot.a_knob] + ([nxt[0].a_knob] if nxt is not None else [])
        scope = list(dict.fromkeys(scope))
        configs = tuple(itertools.product(*(space.knobs[k].domain for k in scope)))
        sums: dict[str, list[float]] = {k: [] for k, _ in FPGA_FIELDS}
        cyc: list[float] = []
        for cfgv in configs:
            val = dict(zip(scope, cfgv))
            pair = [_layer_at(lay, val[slot.w_knob], val[slot.a_knob])]
            if nxt is not None:
                pair.append(_layer_at(nxt[1], 8, val[nxt[0].a_knob]))
            sub = {lay.name: folding[lay.name]} | ({nxt[1].name: folding[nxt[1].name]} if nxt is not None else {})
            row = _fpga_rows(pair, fpga, sub)[1][lay.name]
            for key, attr in FPGA_FIELDS:
                sums[key].append(getattr(row, attr))
            cyc.append(row.ii_cycles)
        factors.append(
            Factor(
                f"{slot.op}.fpga",
                tuple(scope),
                configs,
                np.zeros(len(configs)),
                {k: np.asarray(v, dtype=np.float64) for k, v in sums.items()},
                {"fpga_cycles": np.asarray(cyc, dtype=np.float64)},
            )
        )
    return folding, clock, factors


def cost_tables(
    model: Any,
    space: DecisionSpace,
    asic: ArrayConfig | None = None,
    fpga: FpgaTarget | None = None,
    batch: int = 1,
) -> CostTables:
    """Every op of ``model`` (an IntModel of the network ``space`` describes) priced at
    every joint value of its knobs. ``asic`` defaults to a 32x32 array; ``fpga=None``
    leaves the FPGA metrics out."""
    asic = asic if asic is not None else ArrayConfig()
    cfg = packed_config(asic)
    table = EnergyTable(cfg.node_nm, cfg.vdd)
    infos = op_infos(model)
    by_op = {s.op: s for s in space.layers}
    missing = [s.op for s in space.layers if s.op not in {i.name for i in infos}]
    if missing:
        raise MixedPrecisionError(f"the IntModel lacks the layers' ops {', '.join(missing)}: convert the model the space was built from")
    producer = {op.output: op.name for op in model.ops}

    folding: dict[str, LayerFolding] = {}
    clock = None
    fpga_factors: list[Factor] = []
    if fpga is not None:
        folding, clock, fpga_factors = _fpga_factors(infos, space, fpga, batch)

    factors: list[Factor] = []
    for info in infos:
        slot = by_op.get(info.name)
        sums: dict[str, list[float]] = {}
        maxes: dict[str, list[float]] = {}

        def put(d: dict[str, list[float]], k: str, v: float) -> None:
            d.setdefault(k, []).append(v)

        if slot is not None:
            scope = (slot.w_knob, slot.a_knob)
            configs = tuple(itertools.product(space.knobs[slot.w_knob].domain, space.knobs[slot.a_knob].domain))
            for w, a in configs:
                rec = packed_record(_with_layer_bits(info, w, a), cfg, table, batch)
                put(sums, "asic_energy_pj", rec.energy_pj)
                put(sums, "asic_cycles", rec.cycles)
                lay = op_layer(_with_layer_bits(info, w, a).op, batch)
                put(sums, "weight_bytes", info.op.tensors["weight"].numel() * w / 8)
                put(sums, "bops", lay.macs * w * a)
        else:
            in_knobs = [space.knob_of_value(producer.get(v, v)) for v in info.op.inputs]
            out_knob = space.knob_of_value(info.name)
            scope = tuple(sorted({k for k in (*in_knobs, out_knob) if k is not None}))
            configs = tuple(itertools.product(*(space.knobs[k].domain for k in scope)))
            for cfgv in configs:
                val = dict(zip(scope, cfgv))
                mod = _with_value_bits(info, [None if k is None else val[k] for k in in_knobs], None if out_knob is None else val[out_knob])
                rec = packed_record(mod, cfg, table, batch)
                put(sums, "asic_energy_pj", rec.energy_pj)
                put(sums, "asic_cycles", rec.cycles)
        factors.append(
            Factor(
                info.name,
                scope,
                configs,
                np.zeros(len(configs)),
                {k: np.asarray(v, dtype=np.float64) for k, v in sums.items()},
                {k: np.asarray(v, dtype=np.float64) for k, v in maxes.items()},
            )
        )
    return CostTables(space, tuple(factors + fpga_factors), asic, fpga, folding, clock, {s.op: s.name for s in space.layers})


def with_sensitivity(tables: CostTables, sens: Mapping[str, Mapping[tuple[int, int], float]]) -> Problem:
    """The search problem: the cost tables plus each layer's sensitivity per ``(w, a)``
    and each quantizer's that feeds no layer per ``(0, a)``."""
    factors = []
    for f in tables.factors:
        layer = tables.layer_ops.get(f.name)
        if layer is None:
            factors.append(f)
            continue
        if layer not in sens:
            raise MixedPrecisionError(f"no sensitivity for layer {layer!r}; the table has {', '.join(sens) or 'none'}")
        row = sens[layer]
        try:
            s = np.array([float(row[(w, a)]) for w, a in f.configs])
        except KeyError as e:
            raise MixedPrecisionError(f"sensitivity of layer {layer!r} lacks (w_bits, a_bits) = {e.args[0]}") from None
        factors.append(replace(f, sens=s))
    # A quantizer that feeds no layer has no op of its own to carry its sensitivity:
    # it gets a factor over its knob alone, with no cost.
    for act in tables.space.acts:
        row = sens.get(act.key)
        if row is None:
            raise MixedPrecisionError(f"no sensitivity for quantizer {act.key!r} (it feeds no layer; its entry is {{(0, a_bits): score}})")
        dom = tables.space.knobs[act.knob].domain
        try:
            s = np.array([float(row[(0, a)]) for a in dom])
        except KeyError as e:
            raise MixedPrecisionError(f"sensitivity of quantizer {act.key!r} lacks (0, a_bits) = {e.args[0]}") from None
        factors.append(Factor(f"{act.key}.sensitivity", (act.knob,), tuple((a,) for a in dom), s))
    return Problem(tuple(k.domain for k in tables.space.knobs), tuple(factors))


def simulate_costs(
    model: Any,
    asic: ArrayConfig | None = None,
    fpga_device: str | None = None,
    folding: Mapping[str, LayerFolding] | None = None,
    batch: int = 1,
) -> dict[str, float]:
    """The same metrics straight from the simulators on an IntModel (what a trained
    configuration actually costs): the reference the predictions are checked against."""
    from qatlab.hw.asic.packing import simulate_packed

    rep = simulate_packed(model, asic if asic is not None else ArrayConfig(), batch)
    out: dict[str, float] = {"asic_energy_pj": rep.totals["energy_pj"], "asic_cycles": rep.totals["cycles"]}
    w_bytes = 0.0
    bops = 0
    for op in model.compute_ops():
        w_bytes += op.tensors["weight"].numel() * int(op.attrs["w_bits"]) / 8
        lay = op_layer(op, batch)
        bops += lay.macs * lay.w_bits * lay.a_bits
    out["weight_bytes"] = w_bytes
    out["bops"] = bops
    if fpga_device is not None:
        if folding is None:
            raise MixedPrecisionError("simulate_costs: the FPGA figures need the folding the tables were priced at")
        frep = analyze(from_intmodel(model, batch), fpga_device, folding=dict(folding), schedule=False)
        for key, attr in FPGA_FIELDS:
            total = 0
            for r in frep.layers:
                total += getattr(r, attr)
            out[key] = total
        out["fpga_cycles"] = max(r.ii_cycles for r in frep.layers)
    return out
