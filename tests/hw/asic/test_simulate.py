"""Layer records: packing and sparsity counts, energy, geometry quirks, errors, the report."""

from __future__ import annotations

import json
import math

import pytest

from qatlab.hw.asic import ArrayConfig, ConfigError, EnergyTable, simulate, simulate_layer
from qatlab.hw.asic.energy import mac_pj, node_factor, sram_pj_per_64bit
from qatlab.hw.asic.simulate import RECORD_FIELDS, ifmap_unique_words, scalesim_out
from qatlab.hw.workload import Layer

CFG = ArrayConfig(rows=16, cols=16, dataflow="ws", ifmap_sram_kb=64, filter_sram_kb=64, ofmap_sram_kb=64)


def test_packing_pins_cycles_sram_and_mac_energy():
    dense = Layer.gemm("g", 64, 32, 256)
    low = Layer.gemm("g", 64, 32, 256, w_bits=4, a_bits=4)
    base = simulate_layer(low, CFG)  # packing off: 4-bit operands still take a cell-cycle each
    packed = simulate_layer(low, CFG.replace(pack=0))  # auto: 8 // 4 = 2 MACs per cell per cycle
    assert (base.pack, base.k_eff, packed.pack, packed.k_eff) == (1, 256, 2, 128)
    # ws: folds = ceil(K_eff/16) * ceil(32/16); each fold takes M + 2R + C - 2 = 110 cycles
    assert base.cycles == 16 * 2 * 110 and packed.cycles == 8 * 2 * 110
    assert (base.sram_ifmap_reads, packed.sram_ifmap_reads) == (2 * 64 * 256, 2 * 64 * 128)
    assert (base.sram_filter_reads, packed.sram_filter_reads) == (256 * 32, 128 * 32)
    assert packed.macs == base.macs == dense.macs == 64 * 32 * 256
    assert base.energy_mac_pj == pytest.approx(dense.macs * mac_pj(4, 4))
    assert simulate_layer(dense, CFG).energy_mac_pj == pytest.approx(dense.macs * 0.3)
    assert packed.energy_pj < base.energy_pj
    assert not packed.scalesim_exact  # no SCALE-Sim counterpart
    # an explicit factor is capped by what the bits allow
    assert simulate_layer(low, CFG.replace(pack=8)).pack == 2
    assert simulate_layer(dense, CFG.replace(pack=0)).pack == 1


def test_sparsity_skipping_pins_counts():
    lay = Layer.gemm("s", 64, 32, 256, sparsity=(2, 4))
    off = simulate_layer(lay, CFG)  # the config does not skip: dense counts
    on = simulate_layer(lay, CFG.replace(sparsity=True))
    assert (off.k_eff, on.k_eff) == (256, 128)
    assert (off.macs_executed, on.macs_executed) == (64 * 32 * 256, 64 * 32 * 128)
    assert on.cycles == 8 * 2 * 110 and off.cycles == 16 * 2 * 110
    assert on.sram_filter_reads == 128 * 32
    assert on.energy_mac_pj == pytest.approx(off.energy_mac_pj / 2)
    assert on.energy_pj < off.energy_pj
    # 3:8 on K = 20: blocks 0-7, 8-15 keep 3 each; the tail 16-19 keeps 3
    odd = simulate_layer(Layer.gemm("t", 8, 8, 20, sparsity=(3, 8)), CFG.replace(sparsity=True))
    assert odd.k_eff == 9


def test_scalesim_ceil_geometry_in_named_fields_real_geometry_in_ours():
    lay = Layer("c5", 7, 7, 5, 5, 2, 3, 3, 3)  # (7 - 5) / 3 is not whole: SCALE-Sim adds a window
    assert (lay.ofmap_h, scalesim_out(7, 5, 3)) == (1, 2)
    cfg = ArrayConfig(rows=4, cols=4, dataflow="os", ifmap_sram_kb=1, filter_sram_kb=1, ofmap_sram_kb=1)
    r = simulate_layer(lay, cfg)
    # SCALE-Sim 3.0.0 reports (conv_small__calc_4x4_os_1k, layer c5): 55 cycles, 200 ifmap reads,
    # 98 DRAM ifmap words (the extra window reaches input rows a real convolution never reads).
    assert (r.total_cycles, r.sram_ifmap_reads, r.dram_ifmap_reads) == (55, 200, 98)
    assert r.cycles == 50 + 4 + 4 - 2  # one fold of the real 1-pixel layer
    assert r.macs == 1 * 3 * 50
    assert ifmap_unique_words(lay, 1) == 5 * 5 * 2 and ifmap_unique_words(lay, 1, scalesim=True) == 98


def test_sram_too_small_for_one_fold(tmp_path):
    p = tmp_path / "tiny.cfg"
    p.write_text(
        "[architecture_presets]\nArrayHeight: 64\nArrayWidth: 64\nIfmapSramSzkB: 64\nFilterSramSzkB: 64\nOfmapSramSzkB: 1\nDataflow: os\n"
    )
    cfg = ArrayConfig.from_cfg(p)
    with pytest.raises(ConfigError) as ei:
        simulate([Layer.gemm("big", 128, 128, 16)], cfg)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:6: field 'ofmap_sram_kb'") and "64x64 tile" in msg and "'big'" in msg
    simulate([Layer.gemm("small", 16, 16, 16)], cfg)  # a 16x16 tile fits


def test_energy_table_points_and_scaling():
    assert mac_pj(8, 8) == pytest.approx(0.3)
    assert mac_pj(32, 32) == pytest.approx(0.2 * 16 + 0.1)
    for kb, pj in ((8, 10.0), (32, 20.0), (1024, 100.0)):
        assert sram_pj_per_64bit(kb * 1024) == pytest.approx(pj)
    assert 20 < sram_pj_per_64bit(64 * 1024) < 100
    assert node_factor(45, 0.9) == 1.0
    t = EnergyTable(node_nm=22, vdd=0.8)
    assert t.factor == pytest.approx(22 / 45 * (0.8 / 0.9) ** 2)
    assert t.mac(8, 8) == pytest.approx(0.3 * t.factor)
    assert t.dram_per_byte() == EnergyTable().dram_per_byte()  # DRAM does not follow the logic node
    r45 = simulate([Layer.gemm("g", 32, 32, 32)], CFG)
    r7 = simulate([Layer.gemm("g", 32, 32, 32)], CFG.replace(node_nm=7, vdd=0.7))
    assert r7.totals["energy_pj"] < r45.totals["energy_pj"]


def test_report_totals_json_and_csv():
    layers = [Layer.gemm("a", 40, 20, 30), Layer("b", 10, 10, 3, 3, 4, 8)]
    rep = simulate(layers, CFG)
    t = rep.totals
    assert t["macs"] == sum(lay.macs for lay in layers)
    assert t["tops_per_w"] == pytest.approx(2 * t["macs"] / t["energy_pj"])
    assert t["latency_s"] == pytest.approx(t["cycles"] / 1e9)
    assert t["inferences_per_s"] == pytest.approx(1 / t["latency_s"])
    d = json.loads(rep.to_json())
    assert [r["layer"] for r in d["layers"]] == ["a", "b"] and set(d["layers"][0]) == set(RECORD_FIELDS)
    lines = rep.to_csv().splitlines()
    assert lines[0].split(",") == RECORD_FIELDS and lines[-1].startswith("TOTAL,")
    for r in rep.layers:
        assert r.energy_pj == pytest.approx(r.energy_mac_pj + r.energy_reg_pj + r.energy_sram_pj + r.energy_dram_pj)
        assert r.latency_s == pytest.approx(r.cycles / 1e9) and math.isfinite(r.energy_pj)
    with pytest.raises(ValueError):
        simulate([], CFG)


def test_simulate_a_converted_intmodel():
    import torch
    from torch import nn

    from qatlab.hw.asic import simulate_intmodel
    from qatlab.intmodel import convert
    from qatlab.nn import calibrate, prepare_qat
    from qatlab.quant import QuantSpec

    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.Flatten(), nn.Linear(6 * 4 * 4, 10))
    q = prepare_qat(m, QuantSpec(bits=4, granularity="channel"), QuantSpec(bits=4, symmetric=False))
    calibrate(q, [torch.randn(4, 1, 10, 10)])
    model = convert(q, (1, 10, 10))
    cfg = ArrayConfig(rows=8, cols=8, dataflow="os", ifmap_sram_kb=4, filter_sram_kb=4, ofmap_sram_kb=4)
    plain = simulate_intmodel(model, cfg)
    packed = simulate_intmodel(model, cfg.replace(pack=0))  # 4-bit weights and activations: 2 per cell
    # every op is a row: quantize, conv, conv, flatten, linear; the GEMMs on the array
    assert [r.layer for r in plain.layers] == [r.layer for r in packed.layers] == [op.name for op in model.ops]
    assert [r.unit for r in plain.layers] == ["vector", "array", "array", "none", "array"]
    assert plain.totals["macs"] == 10 * 10 * 4 * 9 + 4 * 4 * 6 * 36 + 960
    assert all(r.pack == 2 for r in packed.layers if r.unit == "array")
    assert packed.totals["cycles"] < plain.totals["cycles"]
    assert packed.totals["tops_per_w"] > plain.totals["tops_per_w"]
