"""The accelerator's configuration: SCALE-Sim's ``.cfg`` knobs plus ours.

:meth:`ArrayConfig.from_cfg` reads SCALE-Sim 3.0.0 configuration files. SCALE-Sim
itself requires every section (``[layout]``, ``[sparsity]``, ...) and crashes on a
missing one; we require only what changes the counts (array shape, SRAM sizes,
dataflow, bandwidth mode) and take SCALE-Sim's own defaults for the rest, so its
older files (no ``[layout]`` section) read too. Every error names the file, the
line and the field.

Our knobs (clock, operand packing, sparsity skipping, energy node) are not in
SCALE-Sim's format; they come from the constructor, the CLI, or an optional
``[qatlab]`` section that SCALE-Sim ignores.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

DATAFLOWS = ("os", "ws", "is")
WORD_BYTES = 1  # SCALE-Sim's word: one byte (its memory model hard-codes word_size = 1)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class ArrayConfig:
    """A systolic array, its three double-buffered SRAMs and its DRAM interface.

    SCALE-Sim fields keep SCALE-Sim's meaning. ``bandwidth_mode``: ``"CALC"`` (SCALE-Sim
    estimates the DRAM bandwidth the array needs: reads never stall) or ``"USER"``
    (reads are limited to ``ifmap_bank_bandwidth`` / ``filter_bank_bandwidth`` words per
    cycle and ofmap writes to ``bandwidth[0]``, as SCALE-Sim 3.0.0 wires them).
    """

    rows: int = 32
    cols: int = 32
    ifmap_sram_kb: int = 64
    filter_sram_kb: int = 64
    ofmap_sram_kb: int = 64
    dataflow: str = "os"
    bandwidth_mode: str = "CALC"
    bandwidth: tuple[int, ...] = (10,)
    ifmap_bank_bandwidth: int = 10
    filter_bank_bandwidth: int = 10
    ifmap_offset: int = 0
    filter_offset: int = 10_000_000
    ofmap_offset: int = 20_000_000
    run_name: str = "qatlab"
    # --- ours -------------------------------------------------------------------
    freq_mhz: float = 1000.0
    # Operands narrower than 8 bits share one 8-bit datapath slot: a cell does k MACs
    # per cycle on k packed operand pairs. 1 = off (SCALE-Sim); 0 = automatic
    # (k = 8 // max(w_bits, a_bits), capped at pack_max); n > 1 = exactly n where bits allow.
    pack: int = 1
    pack_max: int = 4
    # Skip zero weights of N:M-sparse layers (structured along the reduction axis).
    sparsity: bool = False
    # Both give SCALE-Sim's figures exactly. "fast": closed forms, and a replay of
    # SCALE-Sim's buffers only where none exists (overlapping convolution windows in CALC
    # mode, operands that overflow in USER mode); "exact": the replay wherever a count is
    # not simply the operand's size (the reference the closed forms are tested against).
    dram_model: str = "fast"
    node_nm: float = 45.0
    vdd: float = 0.9
    # Lanes of the vector unit beside the array (elementwise, pooling, requantization):
    # 0 = one lane per array column, as TPU v1's activation and pooling units take the
    # array's full output width each cycle (qatlab.hw.asic.vector).
    vector_lanes: int = 0
    source: str = field(default="", compare=False)
    # Where each field came from ("file:line"), for error messages about layer-dependent checks.
    lines: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        where = self.source or "config"
        for f in ("rows", "cols", "ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb", "ifmap_bank_bandwidth", "filter_bank_bandwidth"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{self.where(f)}: field {f!r} must be a positive integer, got {v!r}")
        if self.dataflow not in DATAFLOWS:
            raise ConfigError(f"{self.where('dataflow')}: field 'dataflow' must be one of os, ws, is; got {self.dataflow!r}")
        if self.bandwidth_mode not in ("CALC", "USER"):
            raise ConfigError(f"{self.where('bandwidth_mode')}: field 'bandwidth_mode' must be CALC or USER, got {self.bandwidth_mode!r}")
        if not self.bandwidth or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.bandwidth):
            raise ConfigError(f"{self.where('bandwidth')}: field 'bandwidth' must be positive integers, got {self.bandwidth!r}")
        if not (self.freq_mhz > 0 and math.isfinite(self.freq_mhz)):
            raise ConfigError(f"{where}: field 'freq_mhz' must be a positive number, got {self.freq_mhz!r}")
        if isinstance(self.pack, bool) or not isinstance(self.pack, int) or self.pack < 0:
            raise ConfigError(f"{where}: field 'pack' must be 0 (auto) or a positive integer, got {self.pack!r}")
        if isinstance(self.pack_max, bool) or not isinstance(self.pack_max, int) or self.pack_max < 1:
            raise ConfigError(f"{where}: field 'pack_max' must be a positive integer, got {self.pack_max!r}")
        if self.dram_model not in ("fast", "exact"):
            raise ConfigError(f"{where}: field 'dram_model' must be fast or exact, got {self.dram_model!r}")
        if isinstance(self.vector_lanes, bool) or not isinstance(self.vector_lanes, int) or self.vector_lanes < 0:
            raise ConfigError(
                f"{where}: field 'vector_lanes' must be 0 (one per array column) or a positive integer, got {self.vector_lanes!r}"
            )
        if not (self.node_nm > 0 and self.vdd > 0):
            raise ConfigError(f"{where}: fields 'node_nm' and 'vdd' must be positive, got {self.node_nm!r}, {self.vdd!r}")

    def where(self, fieldname: str) -> str:
        """``file:line`` of a field when read from a file, else the config's name."""
        return self.lines.get(fieldname) or self.source or "config"

    def replace(self, **changes: object) -> "ArrayConfig":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def num_pes(self) -> int:
        return self.rows * self.cols

    @property
    def lanes(self) -> int:
        """The vector unit's lanes (``vector_lanes``, or the array's columns when 0)."""
        return self.vector_lanes or self.cols

    @property
    def freq_hz(self) -> float:
        return self.freq_mhz * 1e6

    @classmethod
    def from_cfg(cls, path: str | os.PathLike[str], **overrides: object) -> "ArrayConfig":
        """Read a SCALE-Sim ``.cfg`` file; ``overrides`` replace fields after reading."""
        return _read_cfg(Path(path), overrides)


# SCALE-Sim's option names (configparser lower-cases them) -> our field, type, required.
_ARCH = {
    "arrayheight": ("rows", int, True),
    "arraywidth": ("cols", int, True),
    "ifmapsramszkb": ("ifmap_sram_kb", int, True),
    "filtersramszkb": ("filter_sram_kb", int, True),
    "ofmapsramszkb": ("ofmap_sram_kb", int, True),
    "ifmapoffset": ("ifmap_offset", int, False),
    "filteroffset": ("filter_offset", int, False),
    "ofmapoffset": ("ofmap_offset", int, False),
    "dataflow": ("dataflow", str, True),
}
_SPELLING = {
    "arrayheight": "ArrayHeight",
    "arraywidth": "ArrayWidth",
    "ifmapsramszkb": "IfmapSramSzkB",
    "filtersramszkb": "FilterSramSzkB",
    "ofmapsramszkb": "OfmapSramSzkB",
    "dataflow": "Dataflow",
}
_LAYOUT = {
    "ifmapsrambankbandwidth": ("ifmap_bank_bandwidth", int),
    "filtersrambankbandwidth": ("filter_bank_bandwidth", int),
}
_OURS = {
    "freq_mhz": ("freq_mhz", float),
    "pack": ("pack", int),
    "pack_max": ("pack_max", int),
    "sparsity": ("sparsity", bool),
    "dram_model": ("dram_model", str),
    "node_nm": ("node_nm", float),
    "vdd": ("vdd", float),
    "vector_lanes": ("vector_lanes", int),
}


def _line_index(text: str) -> tuple[dict[tuple[str, str], int], dict[str, str]]:
    """(section, option) -> 1-based line number, lower-cased (configparser's view); and
    each lower-cased option's spelling in the file, for messages."""
    idx: dict[tuple[str, str], int] = {}
    spelled: dict[str, str] = {}
    section = ""
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[([^\]]+)\]", s)
        if m:
            section = m.group(1).strip().lower()
            idx[(section, "")] = n
            continue
        m = re.match(r"^([^:=#;\s][^:=]*?)\s*[:=]", s)
        if m and section:
            idx.setdefault((section, m.group(1).strip().lower()), n)
            spelled.setdefault(m.group(1).strip().lower(), m.group(1).strip())
    return idx, spelled


def _first_line(text: str, section: str, option: str | None, before: int) -> int | None:
    """The 1-based line where ``[section]`` (``option`` None) or its ``option`` first
    appears before line ``before``: the first of two occurrences configparser refuses."""
    current = None
    for n, line in enumerate(text.splitlines()[: max(0, before - 1)], 1):
        s = line.strip()
        m = re.match(r"^\[(?P<header>.+)\]", s)
        if m:
            current = m.group("header")
            if option is None and current == section:
                return n
            continue
        if option is not None and current == section and line[:1] not in (" ", "\t"):
            m = re.match(r"^([^:=#;]+?)\s*[:=]", s)
            if m and m.group(1).strip().lower() == option:
                return n
    return None


def _read_cfg(p: Path, overrides: dict[str, object]) -> ArrayConfig:
    from qatlab.hw.limits import FLOAT_RANGES, InputFileError, out_of_range, read_text

    try:
        text = read_text(p, "config")
    except InputFileError as e:
        raise ConfigError(str(e)) from None
    # No interpolation: a '%' in a value is a character, not a reference to expand.
    cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), strict=True, interpolation=None)
    try:
        cp.read_string(text, source=str(p))
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(f"{p}:{e.lineno}: no [section] header before {e.line.strip()!r}") from None
    except configparser.DuplicateOptionError as e:
        first = _first_line(text, e.section, e.option, e.lineno)
        also = f" (first at {p}:{first})" if first else ""
        raise ConfigError(f"{p}:{e.lineno}: field {e.option!r} given twice in [{e.section}]{also}: give each field once") from None
    except configparser.DuplicateSectionError as e:
        first = _first_line(text, e.section, None, e.lineno)
        also = f" (first at {p}:{first})" if first else ""
        raise ConfigError(f"{p}:{e.lineno}: section [{e.section}] given twice{also}: merge them into one") from None
    except configparser.ParsingError as e:
        lineno, line = e.errors[0] if e.errors else (0, "")
        raise ConfigError(f"{p}:{lineno}: malformed line {str(line).strip()!r} (expected 'Field: value')") from None
    except configparser.Error as e:
        raise ConfigError(f"{p}: {' '.join(str(e).split())}") from None
    lines, spelled = _line_index(text)
    kw: dict[str, object] = {}
    where_of: dict[str, str] = {}

    def loc(section: str, option: str = "") -> str:
        n = lines.get((section, option)) or lines.get((section, ""))
        return f"{p}:{n}" if n else str(p)

    def get(section: str, option: str, typ: type, fieldname: str) -> object:
        raw = cp.get(section, option).strip().strip('"')
        where = loc(section, option)
        option = spelled.get(option, option)
        where_of[fieldname] = where
        if typ is str:
            return raw
        if typ is bool:
            low = raw.lower()
            if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ConfigError(f"{where}: field {option!r} must be true or false, got {raw!r}")
            return low in ("true", "1", "yes", "on")
        try:
            v = typ(raw)
        except ValueError:
            kind = "an integer" if typ is int else "a number"
            raise ConfigError(f"{where}: field {option!r} must be {kind}, got {raw!r}") from None
        if typ is float and not math.isfinite(v):
            raise ConfigError(f"{where}: field {option!r} must be a finite number, got {raw!r}")
        return v

    def pos_int(section: str, option: str, fieldname: str) -> int:
        v = get(section, option, int, fieldname)
        if v < 1:  # type: ignore[operator]
            raise ConfigError(f"{loc(section, option)}: field {spelled.get(option, option)!r} must be positive, got {v}")
        return v  # type: ignore[return-value]

    sec = "architecture_presets"
    if not cp.has_section(sec):
        raise ConfigError(f"{p}: missing section [{sec}] (array shape, SRAM sizes, dataflow)")
    for opt, (name, typ, required) in _ARCH.items():
        if not cp.has_option(sec, opt):
            if required:
                raise ConfigError(f"{loc(sec)}: section [{sec}] lacks field {opt!r} (SCALE-Sim spells it {_SPELLING[opt]!r})")
            continue
        if typ is int and name.endswith("_offset"):
            kw[name] = get(sec, opt, int, name)
        elif typ is int:
            kw[name] = pos_int(sec, opt, name)
        else:
            kw[name] = get(sec, opt, str, name)
    df = str(kw["dataflow"]).strip().lower()
    if df not in DATAFLOWS:
        raise ConfigError(f"{loc(sec, 'dataflow')}: field 'Dataflow' must be os, ws or is; got {kw['dataflow']!r}")
    kw["dataflow"] = df

    if cp.has_section("general") and cp.has_option("general", "run_name"):
        kw["run_name"] = cp.get("general", "run_name").strip()

    mode = "CALC"
    if cp.has_section("run_presets") and cp.has_option("run_presets", "interfacebandwidth"):
        mode = cp.get("run_presets", "interfacebandwidth").strip().upper()
        where_of["bandwidth_mode"] = loc("run_presets", "interfacebandwidth")
        if mode not in ("CALC", "USER"):
            raise ConfigError(f"{loc('run_presets', 'interfacebandwidth')}: field 'InterfaceBandwidth' must be CALC or USER, got {mode!r}")
    kw["bandwidth_mode"] = mode
    if cp.has_section("run_presets") and cp.has_option("run_presets", "useramulatortrace"):
        if get("run_presets", "useramulatortrace", bool, "ramulator") is True:
            raise ConfigError(
                f"{loc('run_presets', 'useramulatortrace')}: field 'UseRamulatorTrace': Ramulator DRAM traces are not supported"
            )

    if cp.has_option(sec, "bandwidth"):
        raw = cp.get(sec, "bandwidth")
        where_of["bandwidth"] = loc(sec, "bandwidth")
        try:
            bws = tuple(int(x) for x in raw.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"{loc(sec, 'bandwidth')}: field 'Bandwidth' must be comma-separated integers, got {raw.strip()!r}") from None
        if not bws or min(bws) < 1:
            raise ConfigError(f"{loc(sec, 'bandwidth')}: field 'Bandwidth' must be positive, got {raw.strip()!r}")
        kw["bandwidth"] = bws
    elif mode == "USER":
        raise ConfigError(f"{loc(sec)}: InterfaceBandwidth is USER but section [{sec}] lacks field 'Bandwidth'")

    if cp.has_section("layout"):
        for opt, (name, _typ) in _LAYOUT.items():
            if cp.has_option("layout", opt):
                kw[name] = pos_int("layout", opt, name)
        for opt in ("ifmapcustomlayout", "filtercustomlayout"):
            if cp.has_option("layout", opt) and get("layout", opt, bool, opt) is True:
                raise ConfigError(f"{loc('layout', opt)}: field {spelled.get(opt, opt)!r}: custom SRAM layouts are not supported")

    if cp.has_section("sparsity") and cp.has_option("sparsity", "sparsitysupport"):
        # SCALE-Sim's own sparse mode has its own (different) counts; we read the flag as
        # "skip zero weights" and apply our documented model (qatlab.hw.asic.sparsity).
        kw["sparsity"] = get("sparsity", "sparsitysupport", bool, "sparsity")

    if cp.has_section("qatlab"):
        for opt in cp.options("qatlab"):
            if opt not in _OURS:
                raise ConfigError(f"{loc('qatlab', opt)}: unknown field {spelled.get(opt, opt)!r} in [qatlab] (known: {', '.join(_OURS)})")
            name, typ = _OURS[opt]
            kw[name] = get("qatlab", opt, typ, name)

    kw.update(overrides)
    for name in FLOAT_RANGES:
        v = kw.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (why := out_of_range(name, float(v))):
            origin = where_of.get(name, str(p)) if name not in overrides else f"{p} with {name} overridden"
            raise ConfigError(f"{origin}: field {name!r} {why}")
    try:
        return ArrayConfig(source=str(p), lines=where_of, **kw)  # type: ignore[arg-type]
    except ConfigError:
        raise
    except TypeError as e:  # an unknown override name
        raise ConfigError(f"{p}: {e}") from None
