"""An IntModel as a FINN-style dataflow design: one row per op, every op in the totals.

conv (``groups == 1``), linear and grouped (not depthwise) conv are MVAUs, folded by
:func:`.analytic.analyze` (a grouped conv as one MVAU of ``MW = k_h·k_w·C/G``: FINN
has no grouped MVAU, and this keeps its weights and MACs right). Every other op is a
chain of FINN streaming units (:mod:`.units`): a depthwise conv a VVAU, pooling a
Pool or GlobalAccPool, add/mul/cat their stream units, lookup tables Thresholding or
a ROM; pass-through ops cost nothing.

Folding: the MVAUs as :func:`.analytic.analyze` folds them (a given config, a target
frame rate, or the fastest design that fits); then each unit gets, like FINN's
``SetFolding``, the cheapest PE (and SIMD) that keeps it within the MVAU design's
cycle budget (the target's, else the MVAUs' initiation interval). A unit that cannot
keep up even fully unfolded becomes the bottleneck and sets the frame rate. For the
fastest design that fits, the MVAUs are searched again within what the units leave
of the budget (``UNIT_ROUNDS`` rounds, until the whole design fits or nothing
changes). A given folding config may name any op (MVAU or unit) by its name.

Totals sum every row's resources; ``fps`` comes from the slowest unit of any row.
``latency_cycles`` comes from the graph's own timing (:mod:`.graph`): branches run
side by side and meet at their join, whose skip-branch FIFO gets the depth that keeps
the fork from blocking (the join row's ``in_fifo_depth``, its resources in
``fifo_lut``/``fifo_bram18``; ``totals["join_fifo_depths"]`` per input). FINN's own
estimate, the sum of every unit's cycles, is ``latency_cycles_sum``; the max-plus
schedule of :mod:`.schedule` times the MVAU chain alone (``mvau_chain_latency_cycles``).
FIFOs between single-input units are not sized.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import Any, Mapping

from qatlab.hw.opgraph import op_infos
from qatlab.hw.workload import Layer, op_layer

from .analytic import FpgaReport, LayerReport, analyze, resource_use
from .convert import params_from_intmodel
from .devices import FINN_RES_LIMITS, RESOURCES, get_device
from .errors import DoesNotFitError, FoldingError, FpgaError
from .folding import LayerFolding, read_folding
from .graph import GraphNode, graph_schedule, producer_of
from .resources import Resources, fifo_resources
from .units import UnitOption, UnitSpec, choose, unit_spec

# Rounds of the MVAU search that make room for the units (see analyze_intmodel).
UNIT_ROUNDS = 4


def _limits(limits: Mapping[str, float] | float | None) -> dict[str, float]:
    if limits is None:
        return {}
    if isinstance(limits, (int, float)):
        return {r: float(limits) for r in RESOURCES}
    return dict(limits)


def _is_mvau(info: Any) -> bool:
    return info.role == "gemm" or (info.role == "grouped" and not info.depthwise)


def _unit_row(spec: UnitSpec, opt: UnitOption) -> LayerReport:
    i = spec.info
    cyc = dict(opt.cycles)
    swu = cyc.pop("ConvolutionInputGenerator", 0)
    pad = cyc.pop("FMPadding", 0)
    main = max(cyc.values(), default=0)
    acc = spec.acc
    r = opt.res
    pix = math.prod(i.out_shape[1:]) if len(i.out_shape) > 1 else 1
    return LayerReport(
        layer=i.name,
        pe=opt.pe,
        simd=opt.simd,
        cycles=main,
        swu_cycles=swu,
        lut=r.lut,
        dsp=r.dsp,
        bram18=r.bram18,
        acc_bits=acc.used if acc else 0,
        uram=r.uram,
        kind=i.kind,
        unit="+".join(spec.nodes) or "passthrough",
        mh=i.out_shape[0] if i.out_shape else 0,
        mw=spec.simd_axis if spec.nodes and "VVAU" in spec.nodes else 0,
        pixels=pix,
        swu_simd=opt.swu_simd,
        pad_cycles=pad,
        ii_cycles=opt.ii,
        impl="hls" if spec.nodes else "",
        ram_style=opt.ram_style,
        weight_bits=spec.weight_bits,
        wmem_depth=opt.wmem_depth,
        wmem_width=opt.wmem_width,
        line_buffer_bits=spec.line_buffer_bits,
        acc_bits_worst=acc.worst if acc else 0,
        acc_bits_tight=acc.tight if acc else None,
        acc_overflow_possible=bool(acc.overflow_possible) if acc else False,
        out_bits=i.out_bits,
    )


def _padded_layer(info: Any) -> Layer:
    """The op's workload layer, its padding kept in ``meta``: FINN streams a padded conv's
    input through an ``FMPadding`` first (:meth:`.model.LayerSpec.pad_cycles`)."""
    lay = op_layer(info.op)
    pad = _pair(info.op.attrs.get("padding", (0, 0))) if info.kind == "conv" else (0, 0)
    return replace(lay, meta={**lay.meta, "padding": pad}) if pad != (0, 0) else lay


def _split_folding(
    folding: Mapping[str, LayerFolding] | str | os.PathLike[str] | None, mvau_names: list[str], unit_names: list[str]
) -> tuple[dict[str, LayerFolding] | None, dict[str, LayerFolding]]:
    if folding is None:
        return None, {}
    if isinstance(folding, (str, os.PathLike)):
        fmap = read_folding(folding)
    elif isinstance(folding, Mapping):
        fmap = dict(folding)
    else:
        raise FoldingError(
            f"an IntModel's folding is a mapping of op name -> LayerFolding (or a FINN folding file), got {type(folding).__name__}"
        )
    known = set(mvau_names) | set(unit_names) | {"*"}
    unknown = [n for n in fmap if n not in known]
    if unknown:
        raise FoldingError(
            f"folding names op(s) not in the model: {', '.join(map(repr, unknown))}; ops are: {', '.join(mvau_names + unit_names)}"
        )
    mv = {k: v for k, v in fmap.items() if k in mvau_names or k == "*"}
    un = {k: v for k, v in fmap.items() if k in unit_names or k == "*"}
    return mv, un


def analyze_intmodel(
    model: Any,
    device: str | Any,
    *,
    folding: Mapping[str, LayerFolding] | str | os.PathLike[str] | None = None,
    target_fps: float | None = None,
    clock_mhz: float | None = None,
    res_type: str = "auto",
    ram_style: str = "auto",
    limits: Mapping[str, float] | float | None = None,
    schedule: bool = True,
    cost_model: str = "finn",
) -> FpgaReport:
    """Every op of ``model`` (an IntModel) as FINN units on ``device``: one row per op.
    ``cost_model``: as for :func:`.analytic.analyze` (units FINN does not estimate cost
    nothing under ``"finn"``)."""
    if folding is not None and target_fps is not None:
        raise FpgaError("give a folding or a target frame rate, not both")
    dev = get_device(device)
    infos = op_infos(model)
    names = [i.name for i in infos]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise FpgaError(f"op names must be unique (folding configs key on them): {', '.join(dup)}")
    mv_infos = [i for i in infos if _is_mvau(i)]
    specs = {i.name: unit_spec(i, cost_model) for i in infos if not _is_mvau(i)}
    # FINN rounds the accumulator of the graph's last node up to whole bytes: only when
    # nothing but pass-through ops follows the last MVAU is it that node.
    last_mv = max((k for k, i in enumerate(infos) if _is_mvau(i)), default=-1)
    output_last = last_mv >= 0 and all(i.role == "passthrough" for i in infos[last_mv + 1 :])
    mv_fold, unit_fold = _split_folding(folding, [i.name for i in mv_infos], list(specs))

    base = {**FINN_RES_LIMITS, **_limits(limits)}
    if target_fps is not None and not target_fps > 0:
        raise FpgaError(f"target frame rate must be positive, got {target_fps}")
    mvau_layers = [_padded_layer(i) for i in mv_infos]
    by_name = dict(zip((op.name for op in model.compute_ops()), params_from_intmodel(model))) if mv_infos else {}
    params = [by_name[i.name] for i in mv_infos]

    def mvau_design(lim: dict[str, float]) -> FpgaReport:
        return analyze(
            mvau_layers,
            dev,
            folding=mv_fold,
            target_fps=target_fps,
            clock_mhz=clock_mhz,
            params=params,
            res_type=res_type,
            ram_style=ram_style,
            limits=lim,
            schedule=schedule,
            cost_model=cost_model,
            output_last=output_last,
        )

    def fold_units(rep: FpgaReport | None, clock: float) -> dict[str, UnitOption]:
        if target_fps is not None:
            budget: int | None = int(clock * 1e6 // target_fps)
        else:
            budget = int(rep.totals["ii_cycles"]) if rep is not None else None
        out = {}
        for name, spec in specs.items():
            given = unit_fold.get(name, unit_fold.get("*")) if unit_fold else None
            if not spec.nodes:
                out[name] = spec.cost(1, 1)
            elif given is not None:
                out[name] = spec.cost(given.pe, given.simd)
            else:
                out[name] = choose(spec, dev, budget, base)
        return out

    rep: FpgaReport | None = None
    if mv_infos:
        rep = mvau_design(base)
        clock = rep.clock_mhz
    else:
        clock = float(clock_mhz if clock_mhz is not None else dev.default_clock_mhz)
        if not clock > 0 or not math.isfinite(clock):
            raise FpgaError(f"clock must be a positive frequency in MHz, got {clock_mhz!r}")
    opts = fold_units(rep, clock)
    if rep is not None and folding is None and target_fps is None:
        # "Fastest that fits" must leave room for the units: search the MVAUs again
        # within what the units leave of the budget, a few rounds (slower MVAUs let the
        # units fold further, which frees more room).
        for _ in range(UNIT_ROUNDS):
            units = sum((o.res for o in opts.values()), Resources()).as_dict()
            mv_used = {k: rep.totals[k] for k in RESOURCES}
            if all(mv_used[k] + units[k] <= dev.capacity(k) * base[k] for k in RESOURCES):
                break
            left = {k: base[k] - units[k] / dev.capacity(k) if dev.capacity(k) else base[k] for k in RESOURCES}
            if any(v <= 0 for v in left.values()):
                break
            try:
                nxt = mvau_design(left)
            except DoesNotFitError:
                break
            if nxt.folding == rep.folding:
                break  # no progress: the units alone leave no more room
            rep = nxt
            opts = fold_units(rep, clock)

    mv_rows = {r.layer: r for r in (rep.layers if rep else [])}
    rows: list[LayerReport] = []
    fmap: dict[str, LayerFolding] = dict(rep.folding) if rep else {}
    for info in infos:
        if info.name in mv_rows:
            rows.append(replace(mv_rows[info.name], kind=info.kind))
            continue
        spec, opt = specs[info.name], opts[info.name]
        rows.append(_unit_row(spec, opt))
        if spec.nodes:
            fmap[info.name] = LayerFolding(opt.pe, opt.simd, opt.swu_simd)
    vvau_macs = sum(i.out_elems * specs[i.name].simd_axis for i in infos if i.role == "grouped" and i.depthwise)
    latency, joins = _graph_timing(model, infos, rows)
    totals = _totals(rows, rep, dev, clock, set(mv_rows), vvau_macs)
    if latency is not None:
        totals.update(latency_cycles=latency, latency_us=latency / clock, join_fifo_depths=joins)
    return FpgaReport(
        dev, clock, rows, fmap, totals, rep.search if rep else None, rep.stages if rep else [], rep.fifo_depths if rep else None
    )


JOINS = ("add", "mul", "cat")
SOURCE = "<input>"


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _lead(info: Any) -> tuple[int, ...]:
    """Elements of each input an op holds before its first output (module docstring of
    :mod:`.graph`): a window's line buffer, a vector, a whole frame, or one element."""
    a = info.op.attrs
    k = info.kind
    if info.role == "passthrough":
        return tuple(0 for _ in info.in_shapes)
    if k in JOINS:
        big = max(info.in_elems(j) for j in range(len(info.in_shapes)))
        return tuple(info.in_elems(j) if info.in_elems(j) < big else 1 for j in range(len(info.in_shapes)))
    shape = info.in_shapes[0]
    if k == "mean" or len(shape) != 3:
        return (info.in_elems(0),)  # a global reduction, or a fully connected layer's vector
    c, h, w = shape
    if k == "avgpool" and a.get("adaptive"):
        oh = int(info.out_shape[1])
        return (min(h, -(-h // oh) + 1) * w * c,)
    if k in ("conv", "maxpool", "avgpool"):
        kh, kw = _pair(a["kernel"])
        dh, dw = _pair(a.get("dilation", (1, 1)))
        ph, pw = _pair(a.get("padding", (0, 0)))
        kh, kw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        return (((kh - 1) * (w + 2 * pw) + kw) * c,)
    return (1,)


def _graph_timing(model: Any, infos: list[Any], rows: list[LayerReport]) -> tuple[int | None, dict[str, list[int]]]:
    """Latency and join FIFO depths from the graph (:mod:`.graph`); each join row gets its
    FIFO depth and the FIFOs' resources. The source runs at the design's rate."""
    values = {i.op.output: i.name for i in infos}
    by_row = {r.layer: r for r in rows}
    nodes = []
    for i in infos:
        ins = tuple(producer_of(values, v, SOURCE, model.input_name) for v in i.op.inputs)
        ii = 0 if i.role == "passthrough" else max(by_row[i.name].ii_cycles, 1)
        elems = tuple(i.in_elems(j) for j in range(len(i.in_shapes)))
        nodes.append(GraphNode(i.name, ins, elems, i.out_elems, ii, _lead(i), i.kind in JOINS))
    out = values.get(model.output_name)
    if out is None:
        return None, {}
    period = max((r.ii_cycles for r in rows), default=1)
    sch = graph_schedule(nodes, SOURCE, period, out)
    for name, depths in sch.fifo_depth.items():
        r = by_row[name]
        info = next(i for i in infos if i.name == name)
        r.in_fifo_depth = max(depths, default=0)
        for d, bits in zip(depths, info.in_bits):
            f = fifo_resources(-(-d // r.pe), r.pe * bits)
            r.fifo_lut += f.lut
            r.fifo_bram18 += f.bram18
    return sch.latency, {k: list(v) for k, v in sch.fifo_depth.items()}


def _totals(
    rows: list[LayerReport], rep: FpgaReport | None, dev: Any, clock: float, mvau_names: set[str], vvau_macs: int
) -> dict[str, Any]:
    t: dict[str, Any] = dict(rep.totals) if rep else {"search": "units only", "target_fps": None, "search_s": None}
    res = Resources()
    for r in rows:
        res = res + Resources(r.lut + r.fifo_lut, r.dsp, r.bram18 + r.fifo_bram18, r.uram)
    used = res.as_dict()
    # On a tie the MVAU design sets the rate: the units were folded to match it.
    ii_row = max(rows, key=lambda r: (r.ii_cycles, r.layer in mvau_names))
    ii = max(ii_row.ii_cycles, 1)
    for r in rows:
        r.bottleneck = r is ii_row
    clock_hz = clock * 1e6
    fits = all(used[k] <= dev.capacity(k) for k in RESOURCES)
    chain = t.get("latency_cycles")
    total_sum = sum(r.cycles + r.swu_cycles + r.ds_cycles + r.pad_cycles for r in rows)
    if rep is not None and ii_row.layer in mvau_names:
        where = str(rep.totals["bottleneck"])
    else:
        where = f"{ii_row.layer}.{ii_row.unit}"
    expl = f"bottleneck {where}: {ii} cycles per frame -> {clock_hz / ii:.6g} fps at {clock:g} MHz"
    if rep is not None:
        expl += f"; MVAU design: {rep.totals['explanation']}"
    if not fits:
        over = [f"{k.upper()} {used[k]} > {dev.capacity(k)}" for k in RESOURCES if used[k] > dev.capacity(k)]
        expl += f"; DOES NOT FIT {dev.name}: {', '.join(over)}"
    t.update(
        {
            "fps": clock_hz / ii,
            "ii_cycles": ii,
            "bottleneck": where,
            "fits": fits,
            "device": dev.name,
            "clock_mhz": clock,
            "mvau_chain_latency_cycles": chain,
            "latency_cycles_sum": total_sum,
            "latency_cycles": total_sum,
            "latency_us": total_sum / clock,
            "join_fifo_depths": {},
            **resource_use(used, dev),
            "within_finn_limits": all(used[k] <= dev.capacity(k) * FINN_RES_LIMITS[k] for k in RESOURCES),
            "weight_bits": sum(r.weight_bits for r in rows),
            "ops": len(rows),
            "macs_per_frame": int(t.get("macs_per_frame", 0)) + vvau_macs,
            "explanation": expl,
        }
    )
    t["fifo_lut"] = sum(r.fifo_lut for r in rows)
    t["fifo_bram18"] = sum(r.fifo_bram18 for r in rows)
    t.setdefault("fifo_depths_converged", None)
    return t
