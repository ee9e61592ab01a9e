"""Read SCALE-Sim's report files into our record field names, to compare row by row.

SCALE-Sim writes ``COMPUTE_REPORT.csv``, ``BANDWIDTH_REPORT.csv`` and
``DETAILED_ACCESS_REPORT.csv`` (one row per layer, every row ending in a comma). The
same files may also hold several runs, told apart by a leading ``Case`` column (how
the reference figures under ``tests/hw/asic/data`` are kept).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from qatlab.hw.asic.config import ConfigError

# SCALE-Sim column -> our field (the record names docs/cli.md lists under `sim asic`).
COMPUTE_COLUMNS = {
    "Total Cycles (incl. prefetch)": "total_cycles_incl_prefetch",
    "Total Cycles": "total_cycles",
    "Stall Cycles": "stall_cycles",
    "Overall Util %": "overall_util_pct",
    "Mapping Efficiency %": "mapping_eff_pct",
    "Compute Util %": "compute_util_pct",
}
DETAIL_COLUMNS = {
    "SRAM IFMAP Reads": "sram_ifmap_reads",
    "SRAM Filter Reads": "sram_filter_reads",
    "SRAM OFMAP Writes": "sram_ofmap_writes",
    "DRAM IFMAP Reads": "dram_ifmap_reads",
    "DRAM Filter Reads": "dram_filter_reads",
    "DRAM OFMAP Writes": "dram_ofmap_writes",
    "DRAM IFMAP Start Cycle": "dram_ifmap_start",
    "DRAM Filter Start Cycle": "dram_filter_start",
    "DRAM OFMAP Stop Cycle": "dram_ofmap_stop",
}
INT_FIELDS = {v for v in (*COMPUTE_COLUMNS.values(), *DETAIL_COLUMNS.values()) if not v.endswith("_pct")}


def _read(path: Path) -> list[dict[str, str]]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read SCALE-Sim report: {e.strerror or e}") from e
    rows = [[c.strip() for c in r] for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    if not rows:
        raise ConfigError(f"{path}: empty report")
    header = [h for h in rows[0] if h]
    out = []
    for n, r in enumerate(rows[1:], 2):
        vals = r[: len(header)]
        if len(vals) < len(header):
            raise ConfigError(f"{path}:{n}: expected {len(header)} fields, got {len(vals)}")
        out.append(dict(zip(header, vals)))
    return out


def read_scalesim_reports(directory: str | os.PathLike[str], case: str | None = None) -> list[dict[str, float | int]]:
    """One dict per layer with our field names (counts as ints, percentages as floats).

    ``case`` selects the rows of one run in files that carry a ``Case`` column.
    """
    d = Path(directory)
    comp = _read(d / "COMPUTE_REPORT.csv")
    det = _read(d / "DETAILED_ACCESS_REPORT.csv")
    if case is not None:
        comp = [r for r in comp if r.get("Case") == case]
        det = [r for r in det if r.get("Case") == case]
        if not comp:
            raise ConfigError(f"{d}: no rows for case {case!r}")
    if len(comp) != len(det):
        raise ConfigError(f"{d}: COMPUTE_REPORT has {len(comp)} layers, DETAILED_ACCESS_REPORT {len(det)}")
    layers: list[dict[str, float | int]] = []
    for c, a in zip(comp, det):
        rec: dict[str, float | int] = {"layer_id": int(c["LayerID"])}
        for col, name in (*COMPUTE_COLUMNS.items(), *DETAIL_COLUMNS.items()):
            src = c if col in COMPUTE_COLUMNS else a
            v = float(src[col])
            rec[name] = int(v) if name in INT_FIELDS else v
        layers.append(rec)
    return layers
