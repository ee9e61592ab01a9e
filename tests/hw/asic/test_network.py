"""Every IntModel op on the ASIC: the array for GEMMs (grouped convs per group, as
SCALE-Sim maps them), the vector unit for the rest; totals are the rows' sums."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.hw.asic import ArrayConfig, ConfigError, EnergyTable, simulate_intmodel
from qatlab.hw.asic.energy import INT32_ADD_PJ, INT32_MULT_PJ
from qatlab.hw.asic.network import grouped_record, grouped_record_reference
from qatlab.hw.asic.scalesim_reports import read_scalesim_reports
from qatlab.hw.asic.simulate import SUMMED_FIELDS
from qatlab.hw.opgraph import UnsupportedOpError, op_infos

from ..int_nets import U8, conv, depthwise_only, every_kind, op

CFG = ArrayConfig(rows=16, cols=16, dataflow="ws")
DATA = Path(__file__).parent / "data"


def test_every_op_is_a_row_and_the_totals_sum_them():
    m = every_kind()
    rep = simulate_intmodel(m, CFG)
    assert [r.layer for r in rep.layers] == [o.name for o in m.ops]
    assert [r.op_kind for r in rep.layers] == [o.kind for o in m.ops]
    units = {r.layer: r.unit for r in rep.layers}
    assert units["c1"] == units["dw"] == units["gc"] == units["fc"] == "array"
    assert {units[n] for n in ("sl", "pm", "rs", "fl")} == {"none"}
    assert rep.totals["layers"] == len(m.ops)
    for k in SUMMED_FIELDS:
        assert rep.totals[k] == pytest.approx(sum(getattr(r, k) for r in rep.layers)), k
    assert rep.totals["cycles"] == rep.totals["array_cycles"] + rep.totals["vector_cycles"]
    for r in rep.layers:
        assert r.energy_pj == pytest.approx(r.energy_mac_pj + r.energy_reg_pj + r.energy_sram_pj + r.energy_dram_pj)
        if r.unit == "vector":
            assert r.cycles > 0 and r.energy_pj > 0 and r.macs == 0 and r.overall_util_pct == 0
        if r.unit == "none":
            assert (r.cycles, r.energy_pj, r.sram_ifmap_reads, r.dram_ofmap_writes) == (0, 0.0, 0, 0)
    assert rep.totals["macs"] == 8 * 100 * 27 + 8 * 100 * 9 + 8 * 100 * 4 + 1080
    assert [r["layer"] for r in json.loads(rep.to_json())["layers"]] == [o.name for o in m.ops]
    lines = rep.to_csv().splitlines()
    assert len(lines) == len(m.ops) + 2 and lines[-1].startswith("TOTAL,")


def test_depthwise_runs_per_group_with_its_low_utilization():
    rep = simulate_intmodel(every_kind(), CFG)
    r = {x.layer: x for x in rep.layers}
    assert r["dw"].groups == 8 and r["gc"].groups == 2
    # one column and nine reduction rows of a 16x16 array: 9/256 of the cells
    assert r["dw"].mapping_eff_pct == pytest.approx(100 * 9 / 256)
    assert r["dw"].overall_util_pct < r["gc"].overall_util_pct < r["c1"].overall_util_pct


def test_grouped_conv_equals_scalesim_depthwise_layers():
    # SCALE-Sim's DPc7 (6x6 input, 3x3 filters, 3 channels, 2 filters each) is a grouped
    # conv with 3 groups of one channel and two filters; its three per-channel layers are
    # rows 6-8 of conv_small under calc_4x4_os_1k.
    cfg = ArrayConfig.from_cfg(DATA / "configs" / "calc_4x4_os_1k.cfg")
    m = depthwise_only(channels=3, hw=6, k=3, mult=2)
    rec = simulate_intmodel(m, cfg).layers[1]
    ref = read_scalesim_reports(DATA / "scalesim_reports", "conv_small__calc_4x4_os_1k")[6:9]
    assert rec.groups == 3 and rec.scalesim_exact
    for f in (
        "total_cycles",
        "total_cycles_incl_prefetch",
        "stall_cycles",
        "sram_ifmap_reads",
        "sram_filter_reads",
        "sram_ofmap_writes",
        "dram_ifmap_reads",
        "dram_filter_reads",
        "dram_ofmap_writes",
    ):
        assert getattr(rec, f) == sum(x[f] for x in ref), f
    for f in ("overall_util_pct", "mapping_eff_pct", "compute_util_pct"):
        assert getattr(rec, f) == pytest.approx(ref[0][f]), f


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(3, 9),
    st.sampled_from([1, 3]),
    st.sampled_from([1, 2]),
    st.sampled_from(["os", "ws", "is"]),
    st.sampled_from([4, 8]),
)
def test_grouped_fast_path_equals_per_group_reference(groups, cin_g, mult, hw, k, stride, dataflow, rows):
    cfg = ArrayConfig(rows=rows, cols=rows + 4, dataflow=dataflow, ifmap_sram_kb=1, filter_sram_kb=1, ofmap_sram_kb=1)
    c = groups * cin_g
    m = depthwise_only(channels=c, hw=hw, k=k, mult=1)
    m.ops[1] = conv("dw", "q", (c, hw, hw), groups * mult, k, groups=groups, stride=stride, seed=groups)
    info = op_infos(m)[1]
    table = EnergyTable(cfg.node_nm, cfg.vdd)
    fast, ref = grouped_record(info, cfg, table), grouped_record_reference(info, cfg, table)
    for f, v in fast.as_dict().items():
        if isinstance(v, float):
            assert v == pytest.approx(getattr(ref, f)), f
        else:
            assert v == getattr(ref, f), f


@pytest.mark.parametrize("lanes", [0, 5, 64])
def test_vector_unit_cycles_and_traffic(lanes):
    cfg = CFG.replace(vector_lanes=lanes)
    n = lanes or CFG.cols
    r = {x.layer: x for x in simulate_intmodel(every_kind(), cfg).layers}
    assert r["res"].cycles == math.ceil(72 / n)  # add: one output per lane-cycle
    assert r["mp"].cycles == math.ceil(8 * 25 * 4 / n)  # maxpool: one window tap per lane-cycle
    assert r["se"].cycles == math.ceil(72 / n)  # mean: every input element once
    # cat: input 0 needs requantizing (72 elements); input 1 is on the output grid, written in place
    assert (r["cat"].cycles, r["cat"].sram_ifmap_reads, r["cat"].sram_ofmap_writes) == (math.ceil(72 / n), 72, 72)
    assert r["gate"].sram_ifmap_reads == 8 + 72  # the broadcast gate is read once
    assert r["act"].sram_filter_reads == 800  # one table read per output
    assert r["res"].vector_util_pct == pytest.approx(100 * 72 / (r["res"].cycles * n))


def test_vector_energy_follows_the_cited_table():
    cfg = CFG.replace(node_nm=45.0)
    rec = {x.layer: x for x in simulate_intmodel(every_kind(), cfg).layers}["cat"]
    # 72 requantized elements: a 32-bit multiply + add and two 8-bit compares each
    assert rec.energy_mac_pj == pytest.approx(72 * (INT32_MULT_PJ + INT32_ADD_PJ + 2 * 0.03))
    half = {x.layer: x for x in simulate_intmodel(every_kind(), cfg.replace(node_nm=22.5)).layers}["cat"]
    assert half.energy_mac_pj == pytest.approx(rec.energy_mac_pj / 2)
    assert half.energy_dram_pj == pytest.approx(rec.energy_dram_pj)  # DRAM does not follow the node


def test_batch_scales_vector_work():
    one = {x.layer: x for x in simulate_intmodel(every_kind(), CFG).layers}
    four = {x.layer: x for x in simulate_intmodel(every_kind(), CFG, batch=4).layers}
    assert four["res"].cycles == math.ceil(4 * 72 / 16) and four["res"].sram_ofmap_writes == 4 * one["res"].sram_ofmap_writes


def test_vector_lanes_config(tmp_path):
    assert CFG.lanes == 16 and CFG.replace(vector_lanes=8).lanes == 8
    with pytest.raises(ConfigError, match="vector_lanes"):
        ArrayConfig(vector_lanes=-1)
    src = (DATA / "configs" / "scale.cfg").read_text() + "\n[qatlab]\nvector_lanes = 12\n"
    (tmp_path / "v.cfg").write_text(src)
    assert ArrayConfig.from_cfg(tmp_path / "v.cfg").lanes == 12


def test_unsupported_op_is_refused_not_skipped():
    m = every_kind()
    m.ops.insert(5, op("softmax", "sm", ["act"], U8, (8, 10, 10)))
    with pytest.raises(UnsupportedOpError, match="softmax"):
        simulate_intmodel(m, CFG)


def _architectures() -> list[str]:
    from ...test_architectures import ARCHITECTURES

    return sorted(ARCHITECTURES)


@pytest.mark.parametrize("name", _architectures())
def test_reference_architectures_leave_no_op_out(name):
    """MobileNet, ShuffleNet, DenseNet, ResNet, ... blocks: one row per op, totals their sums."""
    from ...test_architectures import _quantized

    im = _quantized(name)[2]
    rep = simulate_intmodel(im, CFG)
    assert [r.layer for r in rep.layers] == [o.name for o in im.ops]
    assert rep.totals["layers"] == len(im.ops)
    for k in SUMMED_FIELDS:
        assert rep.totals[k] == pytest.approx(sum(getattr(r, k) for r in rep.layers)), k
    infos = {i.name: i for i in op_infos(im)}
    for r in rep.layers:
        # every op that computes something costs cycles and energy on its unit (a cat of
        # inputs already on its output grid is written in place by their producers)
        if infos[r.layer].role != "passthrough" and r.op_kind != "cat":
            assert r.cycles > 0 and r.energy_pj > 0, r.layer
