"""Folding: how much of each layer's matrix-vector product runs in parallel.

A layer's MVAU has PE processing elements (one output channel each per cycle) with
SIMD lanes each (SIMD products of the reduction per cycle); PE must divide MH and SIMD
must divide MW, as in FINN (``MVAU.calc_wmem`` asserts both). The unit feeding the
MVAU (sliding window or DownSampler) has its own SIMD, which must divide the input
channels; by default it is the largest divisor of the channels not above the MVAU's
SIMD, so the window stream is as wide as the MVAU can take (FINN inserts a data-width
converter where the two differ, which our element-level FIFOs model for free).

Folding files are FINN's folding-config JSON: one object per layer name with ``PE``
and ``SIMD`` (and optionally ``ram_style``, ``resType``), an optional ``Defaults``
object, and our one extension ``SWU_SIMD``. FINN attributes we do not model
(``mem_mode``, FIFO depths, ...) are accepted and ignored; anything else is an error,
so a typo never silently leaves a layer unfolded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from qatlab.atomic import write_json

from .errors import FoldingError
from .geometry import Geometry

RAM_STYLES = ("auto", "block", "distributed", "ultra")
RES_TYPES = ("auto", "lut", "dsp")

# FINN folding-config attributes that do not change this model's numbers.
_IGNORED_KEYS = frozenset(
    {
        "mem_mode",
        "runtime_writeable_weights",
        "preferred_impl_style",
        "impl_style",
        "inFIFODepths",
        "outFIFODepths",
        "depth",
        "ram_style_thresholds",
        "depth_trigger_uram",
        "depth_trigger_bram",
        "resType_thresholds",
    }
)


@dataclass(frozen=True)
class LayerFolding:
    pe: int = 1
    simd: int = 1
    swu_simd: int | None = None  # None: the default rule (see module docstring)
    ram_style: str = "auto"  # weight memory: auto | block (BRAM) | distributed (LUTRAM) | ultra (URAM)
    res_type: str = "auto"  # multipliers: auto (FINN's choice) | lut | dsp
    # The RTL sliding window's parallel-window mode (a whole window per cycle; needs
    # SWU_SIMD = channels). None: on exactly when the MVAU takes more than C per cycle.
    parallel_window: bool | None = None

    def to_finn(self) -> dict[str, Any]:
        d: dict[str, Any] = {"PE": self.pe, "SIMD": self.simd}
        if self.swu_simd is not None:
            d["SWU_SIMD"] = self.swu_simd
        if self.parallel_window is not None:
            d["parallel_window"] = int(self.parallel_window)
        if self.ram_style != "auto":
            d["ram_style"] = self.ram_style
        if self.res_type != "auto":
            d["resType"] = self.res_type
        return d


Folding = Mapping[str, LayerFolding]


def _pos_int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise FoldingError(f"{where} must be a positive integer, got {v!r}")
    return v


def _parse_entry(d: Any, where: str, base: LayerFolding) -> LayerFolding:
    if not isinstance(d, dict):
        raise FoldingError(f"{where}: expected an object with PE and SIMD, got {type(d).__name__}")
    f = base
    for key, val in d.items():
        if isinstance(val, list) and len(val) == 2 and isinstance(val[1], list):
            val = val[0]  # FINN's Defaults form: [value, [op types]]
        if key == "PE":
            f = replace(f, pe=_pos_int(val, f"{where}: field 'PE'"))
        elif key == "SIMD":
            f = replace(f, simd=_pos_int(val, f"{where}: field 'SIMD'"))
        elif key == "SWU_SIMD":
            f = replace(f, swu_simd=_pos_int(val, f"{where}: field 'SWU_SIMD'"))
        elif key == "ram_style":
            if val not in RAM_STYLES:
                raise FoldingError(f"{where}: field 'ram_style' must be one of {', '.join(RAM_STYLES)}, got {val!r}")
            f = replace(f, ram_style=val)
        elif key == "resType":
            if val not in RES_TYPES:
                raise FoldingError(f"{where}: field 'resType' must be one of {', '.join(RES_TYPES)}, got {val!r}")
            f = replace(f, res_type=val)
        elif key == "parallel_window":
            if isinstance(val, bool) or val in (0, 1):
                f = replace(f, parallel_window=bool(val))
            else:
                raise FoldingError(f"{where}: field 'parallel_window' must be 0 or 1, got {val!r}")
        elif key in _IGNORED_KEYS:
            continue
        else:
            raise FoldingError(f"{where}: unknown field {key!r} (expected PE, SIMD, SWU_SIMD, ram_style, resType, parallel_window)")
    return f


def parse_folding(obj: Any, source: str = "<folding>") -> dict[str, LayerFolding]:
    """A FINN-style folding dict -> {layer name: LayerFolding}; ``Defaults`` under ``"*"``."""
    if not isinstance(obj, dict):
        raise FoldingError(f"{source}: a folding config is a JSON object of layer name -> {{PE, SIMD}}")
    out: dict[str, LayerFolding] = {}
    defaults = LayerFolding()
    if "Defaults" in obj:
        defaults = _parse_entry(obj["Defaults"], f"{source}: Defaults", LayerFolding())
        out["*"] = defaults
    for name, d in obj.items():
        if name == "Defaults":
            continue
        out[name] = _parse_entry(d, f"{source}: layer {name!r}", defaults)
    return out


def read_folding(path: str | os.PathLike[str]) -> dict[str, LayerFolding]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise FoldingError(f"{p}: cannot read folding file: {e.strerror or e}") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise FoldingError(f"{p}: not valid JSON: {e}") from e
    return parse_folding(obj, str(p))


def write_folding(folds: Mapping[str, LayerFolding], path: str | os.PathLike[str]) -> None:
    """Write a FINN-style folding config (atomically: temp file, then rename)."""
    p = Path(path)
    obj = {name: f.to_finn() for name, f in folds.items() if name != "*"}
    write_json(p, obj, indent=2, mkdir=False)


def default_swu_simd(channels: int, simd: int) -> int:
    """The largest divisor of ``channels`` not above ``simd`` (at least 1)."""
    best = 1
    for d in range(1, min(channels, simd) + 1):
        if channels % d == 0:
            best = d
    return best


def check_layer_folding(g: Geometry, f: LayerFolding) -> LayerFolding:
    """Validate one layer's folding; return it with ``swu_simd`` resolved."""
    if g.mh % f.pe:
        raise FoldingError(f"layer {g.name!r}: PE={f.pe} does not divide MH={g.mh} (output channels)")
    if g.mw % f.simd:
        raise FoldingError(f"layer {g.name!r}: SIMD={f.simd} does not divide MW={g.mw} (kernel {g.k_h}x{g.k_w} x {g.channels} channels)")
    if f.ram_style not in RAM_STYLES:
        raise FoldingError(f"layer {g.name!r}: ram_style {f.ram_style!r} is not one of {', '.join(RAM_STYLES)}")
    if f.res_type not in RES_TYPES:
        raise FoldingError(f"layer {g.name!r}: resType {f.res_type!r} is not one of {', '.join(RES_TYPES)}")
    if g.unit == "none":
        # No window unit: the MVAU reads the input stream itself; a SWU_SIMD would be meaningless.
        return replace(f, swu_simd=None, parallel_window=None)
    ss = f.swu_simd if f.swu_simd is not None else default_swu_simd(g.channels, f.simd)
    if g.channels % ss:
        raise FoldingError(f"layer {g.name!r}: SWU_SIMD={ss} does not divide the input channels ({g.channels})")
    if g.unit != "swu":
        return replace(f, swu_simd=ss, parallel_window=None)
    pw = f.parallel_window if f.parallel_window is not None else (ss == g.channels and f.simd > g.channels)
    if pw and ss != g.channels:
        # FINN's RTL window asserts SIMD == IFMChannels in parallel-window mode.
        raise FoldingError(f"layer {g.name!r}: parallel_window needs SWU_SIMD equal to the input channels ({g.channels}), got {ss}")
    return replace(f, swu_simd=ss, parallel_window=bool(pw))


def resolve_folding(geoms: Sequence[Geometry], folding: Mapping[str, LayerFolding] | None) -> list[LayerFolding]:
    """One validated LayerFolding per layer, in order. A layer missing from the config
    takes the ``Defaults`` entry; with no Defaults that is an error (FINN would leave it
    at PE = SIMD = 1, which is rarely what a config's author meant)."""
    folding = dict(folding or {})
    names = {g.name for g in geoms}
    unknown = [n for n in folding if n != "*" and n not in names]
    if unknown:
        raise FoldingError(
            f"folding names layer(s) not in the topology: {', '.join(map(repr, unknown))}; layers are: {', '.join(g.name for g in geoms)}"
        )
    out = []
    for g in geoms:
        f = folding.get(g.name, folding.get("*"))
        if f is None:
            raise FoldingError(f"layer {g.name!r}: no entry in the folding config (and no Defaults)")
        out.append(check_layer_folding(g, f))
    return out
