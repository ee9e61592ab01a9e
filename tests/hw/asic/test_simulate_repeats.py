"""A network's repeated layer shapes are simulated once: the records must not show it."""

from __future__ import annotations

from qatlab.hw.asic import ArrayConfig, simulate, simulate_layer
from qatlab.hw.workload import Layer


def test_repeated_shapes_give_each_layer_its_own_record():
    cfg = ArrayConfig(rows=8, cols=8, dataflow="os", ifmap_sram_kb=1, filter_sram_kb=1, ofmap_sram_kb=4)
    a = Layer("a", 12, 12, 3, 3, 8, 16)
    layers = [a, Layer("b", 12, 12, 3, 3, 8, 16), Layer("c", 12, 12, 3, 3, 8, 16, w_bits=4), Layer("a2", 12, 12, 3, 3, 8, 16)]
    report = simulate(layers, cfg)
    assert [r.layer for r in report.layers] == ["a", "b", "c", "a2"]
    for lay, rec in zip(layers, report.layers):
        assert rec == simulate_layer(lay, cfg)
    # a field that differs (here the weight width, which changes the energy) is not a repeat
    assert report.layers[2].energy_pj != report.layers[0].energy_pj
