"""The fast model: a folded network's cycles, throughput, latency, FIFO depths and
resources on a device, without stepping cycles.

* per layer: FINN's MVAU / SWU / DownSampler cycles (:mod:`.cycles`), the layer's
  initiation interval (the largest of them), resources (:mod:`.resources`), the
  accumulator width (:mod:`.accumulator`), the weight memory and line buffer;
* whole network: frames per second = clock / the largest initiation interval (the
  pipeline runs at its slowest unit), latency from the max-plus schedule of
  :mod:`.schedule` (pipeline fill included; FINN's own estimate, the sum of all units'
  cycles, is reported beside it as ``latency_cycles_sum``), FIFO depths that never
  block at that rate, their resources, and whether it all fits the device.

Scope: the network is the topology's layers as one chain of units, in file order.
Throughput and resources do not depend on that; latency does: a residual network's
branches (a ResNet's downsample path) are timed as if in series, and the FIFO a skip
connection needs is not sized (a SCALE-Sim topology has no graph; an IntModel's
branches are timed as a graph by :func:`.network.analyze_intmodel`). Pooling and padding between layers (which SCALE-Sim
topologies leave out) are joined by an implicit zero-latency stage. Weights are stored
dense (N:M sparsity is not exploited, as FINN does not); a depthwise ("DP") layer is
one single-channel MVAU per channel, as SCALE-Sim expands it (FINN would use a VVAU).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from qatlab.hw.workload import Layer

from .devices import FINN_RES_LIMITS, RESOURCES, Device, get_device
from .errors import FpgaError
from .folding import LayerFolding, read_folding, resolve_folding
from .geometry import Geometry
from .model import LayerSpec, ParamLike, layer_specs
from .resources import Resources, fifo_resources
from .schedule import Stage, build_stages, compute_schedule
from .search import SearchResult, search_folding


@dataclass
class LayerReport:
    """One layer of the design; the first fields are the CLI contract's."""

    layer: str
    pe: int
    simd: int
    cycles: int  # MVAU: (MH/PE)·(MW/SIMD)·output pixels
    swu_cycles: int  # sliding-window unit (0 for 1x1 and fully connected)
    lut: int
    dsp: int
    bram18: int
    acc_bits: int
    uram: int = 0
    kind: str = "conv"
    unit: str = "none"  # swu | ds | none: what feeds the MVAU
    mh: int = 0
    mw: int = 0
    pixels: int = 0
    swu_simd: int | None = None
    ds_cycles: int = 0
    pad_cycles: int = 0  # FINN's FMPadding in front of a padded window (0 without padding)
    ii_cycles: int = 0  # the layer's initiation interval: max of its units' cycles
    impl: str = ""  # rtl (DSP-packed RTL MVU) | hls-lut | hls-dsp
    ram_style: str = ""  # where the weights live: block | distributed | ultra
    weight_bits: int = 0
    wmem_depth: int = 0
    wmem_width: int = 0
    line_buffer_bits: int = 0
    acc_bits_worst: int = 0
    acc_bits_tight: int | None = None
    acc_overflow_possible: bool = False
    out_bits: int | None = None
    in_fifo_depth: int | None = None  # elements, FIFO in front of the layer's first unit
    mid_fifo_depth: int | None = None  # elements, window unit -> MVAU
    fifo_lut: int = 0
    fifo_bram18: int = 0
    bottleneck: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FpgaReport:
    device: Device
    clock_mhz: float
    layers: list[LayerReport]
    folding: dict[str, LayerFolding]
    totals: dict[str, Any]
    search: SearchResult | None = None
    stages: list[str] = field(default_factory=list)
    fifo_depths: list[int] | None = None  # elements, one per FIFO between consecutive stages

    @property
    def fps(self) -> float:
        return float(self.totals["fps"])

    @property
    def fits(self) -> bool:
        return bool(self.totals["fits"])

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [lr.to_dict() for lr in self.layers], "totals": dict(self.totals)}

    def to_csv(self) -> str:
        """The layer table, a blank line, then a one-row totals table."""
        buf = io.StringIO()
        rows = [lr.to_dict() for lr in self.layers]
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        buf.write("\n")
        w = csv.DictWriter(buf, fieldnames=list(self.totals), lineterminator="\n")
        w.writeheader()
        w.writerow({k: ("" if v is None else v) for k, v in self.totals.items()})
        return buf.getvalue()


def _fold_input(
    folding: Mapping[str, LayerFolding] | Sequence[LayerFolding] | str | os.PathLike[str],
    geoms: Sequence[Geometry],
) -> dict[str, LayerFolding]:
    if isinstance(folding, (str, os.PathLike)):
        return read_folding(folding)
    if isinstance(folding, Mapping):
        return dict(folding)
    folding = list(folding)
    if len(folding) != len(geoms):
        raise FpgaError(f"{len(folding)} layer foldings for {len(geoms)} layers")
    return {g.name: f for g, f in zip(geoms, folding)}


def _unit_formula(spec: LayerSpec, f: LayerFolding, unit: str, cycles: int) -> str:
    g = spec.geom
    if unit == "mvau":
        return f"(MH/PE)·(MW/SIMD)·pixels = ({g.mh}/{f.pe})·({g.mw}/{f.simd})·{g.pixels} = {cycles}"
    cw = g.channels // int(f.swu_simd or 1)
    if unit == "swu" and spec.rtl_window:
        if f.parallel_window:
            return f"parallel window: ifm_h·ifm_w + 2 = {g.ifm_h}·{g.ifm_w} + 2 = {cycles}"
        return (
            f"((k_h-1)·ifm_w + k_w)·C/SIMD + ofm_h·max(ofm_w·k_w·k_h·C/SIMD, stride·ifm_w·C/SIMD) = "
            f"(({g.k_h}-1)·{g.ifm_w} + {g.k_w})·{cw} + {g.ofm_h}·max({g.ofm_w}·{g.k_w}·{g.k_h}·{cw}, {g.stride_w}·{g.ifm_w}·{cw}) = {cycles}"
        )
    if unit == "swu":
        return (
            f"ifm_w·k_h·C/SIMD + ofm_h·max(ofm_w·k_w·k_h·C/SIMD, stride·ifm_w·C/SIMD) = "
            f"{g.ifm_w}·{g.k_h}·{cw} + {g.ofm_h}·max({g.ofm_w}·{g.k_w}·{g.k_h}·{cw}, {g.stride_h}·{g.ifm_w}·{cw}) = {cycles}"
        )
    return f"ifm_h·ifm_w·C/SIMD = {g.ifm_h}·{g.ifm_w}·{cw} = {cycles}"


def analyze(
    layers: Sequence[Layer],
    device: str | Device,
    *,
    folding: Mapping[str, LayerFolding] | Sequence[LayerFolding] | str | os.PathLike[str] | None = None,
    target_fps: float | None = None,
    clock_mhz: float | None = None,
    params: Sequence[ParamLike] | None = None,
    signed_input: bool = False,
    acc_bits: int | Sequence[int | None] | None = None,
    res_type: str = "auto",
    ram_style: str = "auto",
    limits: Mapping[str, float] | float | None = None,
    schedule: bool = True,
    cost_model: str = "finn",
    output_last: bool = True,
) -> FpgaReport:
    """Model ``layers`` as a FINN-style dataflow accelerator on ``device``.

    Folding: ``folding`` (a FINN-style config: mapping, path, or one LayerFolding per
    layer); else ``target_fps`` (the cheapest folding meeting it); else the fastest
    folding that fits (:func:`.search.search_folding`). ``params``: per layer an
    IntLayer or a weight array [MH, MW] (tight accumulator bounds, DSP48E1 packing
    rules), or None. ``schedule=False`` skips latency and FIFO depths (their cost
    grows with the stream's word count; the rest is closed form).

    ``cost_model="finn"`` (default): every number is FINN's estimate of the design its
    default build makes (RTL sliding windows, thresholds inside the MVAU, weights
    ``internal_decoupled``); ``"qatlab"``: the fuller count of :mod:`.resources`
    (docs/fpga-finn.md lists the differences). ``output_last``: the last layer is the
    graph's output (FINN rounds its accumulator without activation to whole bytes).
    """
    if folding is not None and target_fps is not None:
        raise FpgaError("give a folding or a target frame rate, not both")
    dev = get_device(device)
    clock = float(clock_mhz if clock_mhz is not None else dev.default_clock_mhz)
    if not clock > 0 or not math.isfinite(clock):
        raise FpgaError(f"clock must be a positive frequency in MHz, got {clock_mhz!r}")
    specs = layer_specs(layers, params, signed_input=signed_input, acc_bits=acc_bits, cost_model=cost_model, output_last=output_last)
    geoms = [s.geom for s in specs]
    names = [g.name for g in geoms]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise FpgaError(f"layer names must be unique (folding configs key on them): {', '.join(dup)}")
    sr: SearchResult | None = None
    if folding is None:
        sr = search_folding(specs, dev, clock, target_fps=target_fps, limits=limits, res_type=res_type, ram_style=ram_style)
        fmap = sr.folding(names)
    else:
        fmap = _fold_input(folding, geoms)
        fmap = {k: _with_defaults(v, res_type, ram_style) for k, v in fmap.items()}
    folds = resolve_folding(geoms, fmap)
    return _report(specs, folds, dev, clock, sr, schedule)


def _with_defaults(f: LayerFolding, res_type: str, ram_style: str) -> LayerFolding:
    from dataclasses import replace

    return replace(
        f,
        res_type=f.res_type if f.res_type != "auto" else res_type,
        ram_style=f.ram_style if f.ram_style != "auto" else ram_style,
    )


def _elem_bits(spec: LayerSpec, stage: Stage) -> int:
    """Bits per element of a stage's output stream."""
    if stage.unit in ("swu", "ds", "source"):
        return spec.a_bits
    return spec.out_bits if spec.out_bits is not None else spec.acc.used


def resource_use(used: Mapping[str, float], dev: Device) -> dict[str, Any]:
    """The design's LUT/DSP/BRAM18/URAM counts and their percentages of ``dev``."""
    return {
        **{k: used[k] for k in ("lut", "dsp", "bram18", "uram")},
        "lut_pct": 100.0 * used["lut"] / dev.lut,
        "dsp_pct": 100.0 * used["dsp"] / dev.dsp,
        "bram18_pct": 100.0 * used["bram18"] / dev.bram18,
        # A device without UltraRAM: 0 % if none is used, else None (JSON has no infinity).
        "uram_pct": (100.0 * used["uram"] / dev.uram) if dev.uram else (0.0 if used["uram"] == 0 else None),
    }


def _report(
    specs: Sequence[LayerSpec],
    folds: Sequence[LayerFolding],
    dev: Device,
    clock: float,
    sr: SearchResult | None,
    do_schedule: bool,
) -> FpgaReport:
    rows: list[LayerReport] = []
    unit_cycles: list[tuple[int, str, int]] = []  # (cycles, unit, layer index)
    for index, (spec, fold) in enumerate(zip(specs, folds)):
        geom = spec.geom
        mvau_cycles, swu_cycles, ds_cycles = spec.cycles(fold)
        pad_cycles = spec.pad_cycles(fold.swu_simd)
        cost = spec.cost(fold, dev)
        total = cost.total
        unit_cycles += (
            [(mvau_cycles, "mvau", index)]
            + ([(swu_cycles, "swu", index)] if geom.unit == "swu" else [])
            + ([(ds_cycles, "ds", index)] if geom.unit == "ds" else [])
            + ([(pad_cycles, "pad", index)] if spec.padded else [])
        )
        rows.append(
            LayerReport(
                layer=geom.name,
                pe=fold.pe,
                simd=fold.simd,
                cycles=mvau_cycles,
                swu_cycles=swu_cycles,
                lut=total.lut,
                dsp=total.dsp,
                bram18=total.bram18,
                acc_bits=spec.acc.used,
                uram=total.uram,
                kind=geom.kind,
                unit=geom.unit,
                mh=geom.mh,
                mw=geom.mw,
                pixels=geom.pixels,
                swu_simd=fold.swu_simd,
                ds_cycles=ds_cycles,
                pad_cycles=pad_cycles,
                ii_cycles=max(mvau_cycles, swu_cycles, ds_cycles, pad_cycles),
                impl=cost.impl,
                ram_style=cost.ram_style,
                weight_bits=geom.mh * geom.mw * spec.w_bits,
                wmem_depth=cost.wmem_depth,
                wmem_width=cost.wmem_width,
                line_buffer_bits=spec.line_buffer_bits,
                acc_bits_worst=spec.acc.worst,
                acc_bits_tight=spec.acc.tight,
                acc_overflow_possible=spec.acc.overflow_possible,
                out_bits=spec.out_bits,
            )
        )
    ii, bottleneck_unit, bottleneck_index = max(unit_cycles)
    rows[bottleneck_index].bottleneck = True
    clock_hz = clock * 1e6
    latency = None
    depths: list[int] | None = None
    stage_names: list[str] = []
    converged = None
    if do_schedule:
        from qatlab.hw.limits import check_fpga_schedule

        check_fpga_schedule([spec.geom for spec in specs], folds)  # refused before the per-word arrays exist
        stages = build_stages([spec.geom for spec in specs], folds, rtl_window=specs[0].rtl_window)
        schedule = compute_schedule(stages, fifo_depths=True)
        assert schedule.period == ii, (schedule.period, ii)
        latency, depths, converged = schedule.latency, schedule.fifo_depth, schedule.converged
        stage_names = [st.name for st in stages]
        for fifo_index, depth in enumerate(depths):
            producer, consumer = stages[fifo_index], stages[fifo_index + 1]
            consumer_row = rows[consumer.layer]
            producer_spec = specs[max(producer.layer, 0)] if producer.unit != "source" else specs[0]
            words = math.ceil(depth / producer.write_width)
            fifo = fifo_resources(words, producer.write_width * _elem_bits(producer_spec, producer))
            consumer_row.fifo_lut += fifo.lut
            consumer_row.fifo_bram18 += fifo.bram18
            first_unit = consumer.unit != "mvau" or specs[consumer.layer].geom.unit == "none"
            if first_unit:
                consumer_row.in_fifo_depth = depth
            else:
                consumer_row.mid_fifo_depth = depth
    res = Resources()
    for row in rows:
        res = res + Resources(row.lut + row.fifo_lut, row.dsp, row.bram18 + row.fifo_bram18, row.uram)
    used = res.as_dict()
    fits = all(used[kind] <= dev.capacity(kind) for kind in RESOURCES)
    within = all(used[kind] <= dev.capacity(kind) * FINN_RES_LIMITS[kind] for kind in RESOURCES)
    spec_b, fold_b = specs[bottleneck_index], folds[bottleneck_index]
    explanation = (
        f"bottleneck {spec_b.name}.{bottleneck_unit}: "
        f"{_unit_formula(spec_b, fold_b, bottleneck_unit, ii)} cycles per frame -> "
        f"{clock_hz / ii:.6g} fps at {clock:g} MHz"
    )
    if sr is not None:
        explanation += f"; search: {sr.explanation}"
    if not fits:
        over = [f"{kind.upper()} {used[kind]} > {dev.capacity(kind)}" for kind in RESOURCES if used[kind] > dev.capacity(kind)]
        explanation += f"; DOES NOT FIT {dev.name}: {', '.join(over)}"
    totals: dict[str, Any] = {
        "fps": clock_hz / ii,
        "latency_cycles": latency,
        "fits": fits,
        "device": dev.name,
        "clock_mhz": clock,
        "ii_cycles": ii,
        "latency_us": (latency / clock if latency is not None else None),
        # FINN's latency estimate (dataflow_performance "critical_path_cycles"): the sum of
        # every unit's cycles along the chain, as if no unit overlapped another.
        "latency_cycles_sum": sum(row.cycles + row.swu_cycles + row.ds_cycles + row.pad_cycles for row in rows),
        "bottleneck": f"{spec_b.name}.{bottleneck_unit}",
        **resource_use(used, dev),
        "fifo_lut": sum(row.fifo_lut for row in rows),
        "fifo_bram18": sum(row.fifo_bram18 for row in rows),
        "fifo_depths_converged": converged,
        "within_finn_limits": within,
        "macs_per_frame": sum(spec.geom.macs for spec in specs),
        "weight_bits": sum(row.weight_bits for row in rows),
        "search": sr.mode if sr else "given",
        "target_fps": sr.target_fps if sr else None,
        "search_s": sr.elapsed_s if sr else None,
        "explanation": explanation,
    }
    fmap = {spec.name: fold for spec, fold in zip(specs, folds)}
    return FpgaReport(dev, clock, rows, fmap, totals, sr, stage_names, depths)
