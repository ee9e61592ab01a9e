"""What the simulators refuse before they start: input files too large to be a
configuration or a topology, and layers whose working set cannot fit in memory.

The simulators' counts are closed forms, but some of them keep per-fold or per-cycle
arrays (the ASIC's ofmap write stream, the FPGA's stream schedule) whose length grows
with the layer. A layer with a side of 10^12 would ask numpy for terabytes and die
with a MemoryError deep inside; these checks name the layer, the bytes it needs and
the bytes the machine has instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

# A SCALE-Sim config or topology is a few kilobytes; 16 MiB leaves room for generated
# topologies of thousands of layers while `--topology /dev/zero` still stops at once.
MAX_TEXT_BYTES = 16 * 1024 * 1024
# Layers one topology may expand to (a depthwise layer counts one per channel, as
# SCALE-Sim runs it): each costs a Python-level record, so a typo of 10^9 channels on
# a `DP` layer is refused instead of building a billion of them.
MAX_TOPOLOGY_LAYERS = 100_000

# Peak bytes the simulators' working sets take per unit of layer size, measured with
# tracemalloc on layers that stress each term (at most about 200 bytes per demand row
# or fold for the ASIC, per stream word of one frame for the FPGA, whose schedule keeps
# the times of a few frames) and rounded up; tests/hw/test_limits.py checks the bounds
# against measured peaks.
ASIC_BYTES_PER_ROW_OR_FOLD = 256
# With dram_model="exact" the CALC-mode replay walks the SRAM read streams (about 50
# bytes per word read at the peak).
ASIC_BYTES_PER_REPLAYED_READ = 64
# USER bandwidth mode replays every demand row through SCALE-Sim's read buffers once an
# operand overflows its SRAM (about 500 bytes per demand row at the peak); the bound
# assumes it does, which only matters for layers of billions of cycles.
ASIC_BYTES_PER_USER_ROW = 640
FPGA_BYTES_PER_WORD = 256


# Physical ranges of the ASIC's float knobs: outside them the figures overflow (a clock
# of 1e-320 MHz gives an infinite latency, a supply of 1e300 V an overflowing energy).
FLOAT_RANGES: dict[str, tuple[float, float]] = {
    "freq_mhz": (1e-3, 1e6),  # 1 kHz .. 1 THz
    "node_nm": (1.0, 1000.0),
    "vdd": (0.1, 10.0),
}


class LimitError(ValueError):
    """Input the simulators refuse: a file too large to read, a layer too large to simulate."""


class InputFileError(ValueError):
    """A configuration or topology file that cannot be read as text; the message names it."""


def read_text(path: str | os.PathLike[str], what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a small input file, or InputFileError naming the file and the fault.

    Reads at most ``limit + 1`` bytes, so a device or a huge file is refused rather than
    read whole; binary content is refused by offset rather than left to a decode error
    further on.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise InputFileError(f"{p}: is a folder, not a {what} file")
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except InputFileError:
        raise
    except FileNotFoundError:
        raise InputFileError(f"{p}: cannot read {what} file: no such file") from None
    except OSError as e:
        raise InputFileError(f"{p}: cannot read {what} file: {e.strerror or e}") from None
    if len(data) > limit:
        raise InputFileError(f"{p}: larger than {limit // (1024 * 1024)} MiB: not a {what} file")
    nul = data.find(b"\0")
    if nul >= 0:
        raise InputFileError(f"{p}: binary data (a NUL byte at offset {nul}): not a {what} file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(f"{p}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): not a {what} file") from None


def out_of_range(name: str, value: float) -> str | None:
    """Why ``value`` is unusable for knob ``name`` (see FLOAT_RANGES), or None when it is fine."""
    lo, hi = FLOAT_RANGES[name]
    if not lo <= value <= hi:
        return f"must be between {lo:g} and {hi:g}, got {value!r}"
    return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    # A container's own limit can be far below the host's free memory.
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available_memory() -> int:
    """Bytes this process can still allocate: the smallest of the free RAM (Linux's
    MemAvailable, else free physical pages), the container's headroom and the address-space limit."""
    candidates = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1):
            candidates.append(int(soft))
    except (ImportError, OSError, ValueError):
        pass
    return min(candidates) if candidates else 1 << 62


def format_bytes(n: float) -> str:
    """``1.5 GiB``-style size for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def require_memory(need: int, what: str, available: int | None = None, hint: str = "") -> None:
    """LimitError unless ``need`` bytes fit in ``available`` (default: :func:`available_memory`)."""
    have = available_memory() if available is None else available
    if need > have:
        raise LimitError(
            f"{what} needs about {format_bytes(need)} ({need} bytes) of memory to simulate; "
            f"{format_bytes(have)} ({have} bytes) are available" + (f": {hint}" if hint else "")
        )


def asic_mapping_bytes(rows_per_fold: int, folds: int) -> int:
    """Peak bytes of the ASIC model for one layer mapping: per demand row of one fold
    (the ofmap write profiles) plus per fold (fold shapes, per-fold utilization)."""
    return ASIC_BYTES_PER_ROW_OR_FOLD * (rows_per_fold + folds)


def check_asic_mappings(name: str, mappings: Sequence[Any], *, dram_exact: bool, user_mode: bool, available: int | None = None) -> None:
    """LimitError unless layer ``name``, folded as ``mappings`` (``ArrayMapping``: SCALE-Sim's
    geometry and the real one), can be simulated in the memory there is. O(1) per mapping."""
    need, shape = 0, ""
    for m in mappings:
        extra = ASIC_BYTES_PER_REPLAYED_READ * (m.sram_ifmap_reads + m.sram_filter_reads) if dram_exact else 0
        if user_mode:  # replayed once an operand overflows its SRAM: counted as if it always does
            extra = max(extra, ASIC_BYTES_PER_USER_ROW * m.compute_rows)
        total = asic_mapping_bytes(m.rows_per_fold, m.folds) + extra
        if total > need:
            need, shape = total, f"{m.M}x{m.N}x{m.K} GEMM on a {m.R}x{m.C} {m.dataflow} array"
    require_memory(need, f"layer {name!r} ({shape})", available, hint="check the layer's and the array's sizes")


# Python steps the ASIC's replays of SCALE-Sim's buffers may take for one layer: the
# USER-mode read-buffer replay steps through every requested word (about 0.5 million a
# second measured on a 2-core VM), the ofmap write-buffer event replay through every
# drain. 3e7 keeps a refused layer's would-be run above a minute and every layer of the
# SCALE-Sim reference runs (1e6 steps at most) far below the bound.
MAX_ASIC_REPLAY_STEPS = 30_000_000
# The CALC-mode replay of an overlapping-window ifmap is vectorised: about 1e8 requests
# a second on the same VM, so 3e9 requests keep it near half a minute.
MAX_ASIC_VECTOR_REPLAY_REQUESTS = 3_000_000_000


def check_asic_replay(name: str, steps: int, what: str, limit: int = MAX_ASIC_REPLAY_STEPS, per_s: float = 500_000) -> None:
    """LimitError unless a replay of ``steps`` steps (``what`` names it; ``per_s`` a second) fits the time bound."""
    if steps > limit:
        raise LimitError(
            f"layer {name!r}: {what} takes {steps} steps, over the bound of {limit} "
            f"(about {steps / per_s:.3g} s at {per_s:.3g} steps a second): "
            "enlarge the SRAMs or the bandwidth so that the operands fit, or shrink the layer"
        )


def fpga_stream_words(geoms: Sequence[Any], folds: Sequence[Any]) -> int:
    """An upper bound on the stream words of one frame over every unit of the FPGA
    pipeline (``geoms``: the layers' ``Geometry``, ``folds``: their ``LayerFolding``)."""
    words = 0
    for g, f in zip(geoms, folds):
        per_image = 0
        if g.unit in ("swu", "ds"):
            ss = max(1, int(f.swu_simd or 1))
            per_image += -(-g.ifm_h * g.ifm_w * g.channels // ss)  # reads
            per_image += -(-g.ofm_h * g.ofm_w * g.k_h * g.k_w * g.channels // ss)  # writes (windows)
        words += g.batch * per_image
        words += g.pixels * (-(-g.mw // f.simd) + -(-g.mh // f.pe))  # the MVAU's reads and writes
    if geoms:
        words += geoms[0].in_elems  # the source, one element per word at worst
    return words


def fpga_schedule_bytes(words_per_frame: int) -> int:
    """Peak bytes of the FPGA stream schedule: every unit's read and write words of one
    frame, indexed and timed, with the push and pop times of the frames it schedules."""
    return FPGA_BYTES_PER_WORD * words_per_frame


def check_fpga_schedule(geoms: Sequence[Any], folds: Sequence[Any], available: int | None = None) -> None:
    """LimitError unless the stream schedule of the folded network fits in memory."""
    words = fpga_stream_words(geoms, folds)
    require_memory(
        fpga_schedule_bytes(words),
        f"the stream schedule ({words} words per frame over {len(geoms)} layers)",
        available,
        hint="shrink the layers, or skip latency and FIFO depths (schedule=False, --no-schedule)",
    )
