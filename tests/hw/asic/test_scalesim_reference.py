"""Our records against SCALE-Sim 3.0.0's own reports, kept as figures under data/.

The figures were produced by ``data/make_reference.py`` (SCALE-Sim itself is not needed
here): SCALE-Sim's shipped ``scale.cfg`` (32x32, os, CALC) and ``google.cfg`` (256x256,
ws, USER) on shipped topologies, and our own conv and GEMM layers on arrays from 4x4 to
256x256 with all three dataflows, tiny SRAMs (evictions, drains, stalls) and both
bandwidth modes.

What must hold (see qatlab.hw.asic.memory and qatlab.hw.asic.calc_reads for why): by
default every SCALE-Sim-named field of every layer equals SCALE-Sim's — cycles, stalls,
utilizations, SRAM and DRAM counts, in both bandwidth modes — and ``scalesim_exact`` is
true; with ``dram_model="exact"`` (SCALE-Sim's buffers replayed wherever the count is not
trivially the operand's size) the same holds. Our ``cycles`` correct SCALE-Sim's USER-mode
stall arithmetic and are not compared.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from qatlab.hw.asic import ArrayConfig, simulate
from qatlab.hw.asic.scalesim_reports import read_scalesim_reports
from qatlab.hw.workload import read_topology

DATA = Path(__file__).parent / "data"
CASES = json.loads((DATA / "cases.json").read_text())
COMPUTE = ["total_cycles", "total_cycles_incl_prefetch", "stall_cycles", "overall_util_pct", "mapping_eff_pct", "compute_util_pct"]
SRAM = ["sram_ifmap_reads", "sram_filter_reads", "sram_ofmap_writes"]
DRAM = ["dram_ifmap_reads", "dram_filter_reads", "dram_ofmap_writes"]


@lru_cache(maxsize=None)
def reference(case: str) -> list[dict]:
    return read_scalesim_reports(DATA / "scalesim_reports", case)


def run(case: dict, **overrides: object):
    cfg = ArrayConfig.from_cfg(DATA / case["config"], **overrides)
    return cfg, simulate(read_topology(DATA / case["topology"]), cfg).layers


def mismatches(ref: list[dict], recs: list, fields: list[str]) -> list[str]:
    assert len(ref) == len(recs)
    return [f"{o.layer}.{f}: scalesim {r[f]} ours {getattr(o, f)}" for r, o in zip(ref, recs) for f in fields if r[f] != getattr(o, f)]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_scalesim(case):
    _, recs = run(case)
    assert all(o.scalesim_exact for o in recs)
    assert not mismatches(reference(case["name"]), recs, COMPUTE + SRAM + DRAM)


def test_reference_covers_both_modes_and_overflow():
    n = calc = overflow = 0
    for case in CASES:
        cfg = ArrayConfig.from_cfg(DATA / case["config"])
        k = len(read_topology(DATA / case["topology"]))
        n += k
        calc += k * (cfg.bandwidth_mode == "CALC")
        overflow += k * (min(cfg.ifmap_sram_kb, cfg.filter_sram_kb) <= 2)
    assert n > 500 and 300 < calc < n and overflow > 200


# The replay handles every requested word (numpy for CALC, a Python step per word for
# USER): the shipped networks take tens of seconds to minutes each, so they are slow.
SLOW = {"tiny_llm__google", "alexnet__google", "tiny_llm__scale", "alexnet__scale", "Resnet18__scale"} | {
    c["name"] for c in CASES if c["name"].startswith("conv_mid__user")
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow) if c["name"] in SLOW else c for c in CASES],
    ids=[c["name"] for c in CASES],
)
def test_exact_dram_model_matches_every_layer(case):
    _, recs = run(case, dram_model="exact")
    assert all(o.scalesim_exact for o in recs)
    assert not mismatches(reference(case["name"]), recs, COMPUTE + SRAM + DRAM)
