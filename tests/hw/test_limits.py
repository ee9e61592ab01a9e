"""qatlab.hw.limits: input files read safely, and the memory bounds hold against measured peaks."""

from __future__ import annotations

import tracemalloc

import pytest

from qatlab.hw import limits
from qatlab.hw.asic import ArrayConfig, simulate
from qatlab.hw.asic.dataflow import ArrayMapping
from qatlab.hw.asic.simulate import reduction_length
from qatlab.hw.workload import Layer


def test_read_text_refuses_what_is_not_a_small_text_file(tmp_path):
    (tmp_path / "ok.cfg").write_text("[a]\nb = 1\n")
    assert limits.read_text(tmp_path / "ok.cfg", "config") == "[a]\nb = 1\n"
    (tmp_path / "bin").write_bytes(b"ab\xffcd")
    (tmp_path / "nul").write_bytes(b"ab\x00cd")
    (tmp_path / "big").write_bytes(b"x" * 101)
    cases = {
        tmp_path / "bin": "byte 0xff at offset 2",
        tmp_path / "nul": "NUL byte at offset 2",
        tmp_path / "nope": "cannot read config file: no such file",
        tmp_path: "is a folder",
    }
    for path, words in cases.items():
        with pytest.raises(limits.InputFileError, match=words):
            limits.read_text(path, "config")
    with pytest.raises(limits.InputFileError, match="larger than"):
        limits.read_text(tmp_path / "big", "config", limit=100)
    with pytest.raises(limits.InputFileError, match="larger than"):
        limits.read_text("/dev/zero", "config", limit=1000)


def test_require_memory_names_both_figures():
    limits.require_memory(100, "x", available=100)
    with pytest.raises(limits.LimitError, match=r"layer 'a' needs about 1\.5 KiB \(1536 bytes\).*1 KiB \(1024 bytes\) are available"):
        limits.require_memory(1536, "layer 'a'", available=1024)


def test_available_memory_is_positive():
    assert limits.available_memory() > 0


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
@pytest.mark.parametrize("mnk", [(20_000, 1, 1), (1, 20_000, 1), (1, 1, 20_000), (300, 300, 64)])
def test_asic_bound_covers_the_measured_peak(dataflow, mnk):
    cfg = ArrayConfig(rows=4, cols=4, dataflow=dataflow, ifmap_sram_kb=1, filter_sram_kb=1, ofmap_sram_kb=1)
    layer = Layer.gemm("g", *mnk)
    m = ArrayMapping(dataflow, 4, 4, layer.M, layer.N, reduction_length(layer, cfg)[1])
    tracemalloc.start()
    try:
        simulate([layer], cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert limits.asic_mapping_bytes(m.rows_per_fold, m.folds) >= peak


def test_asic_check_refuses_a_terabyte_layer_in_constant_time():
    cfg = ArrayConfig(dataflow="ws")
    big = Layer("big", 10**12, 3, 3, 3, 1, 8)
    m = ArrayMapping("ws", 32, 32, big.M, big.N, big.K)
    with pytest.raises(limits.LimitError, match="layer 'big' .*GEMM on a 32x32 ws array"):
        limits.check_asic_mappings("big", [m], dram_exact=False, user_mode=False)
    with pytest.raises(limits.LimitError, match="layer 'big'"):
        simulate([big], cfg)  # the library refuses it, before allocating
    small = ArrayMapping("ws", 32, 32, 64, 64, 64)
    limits.check_asic_mappings("small", [small], dram_exact=True, user_mode=True, available=1 << 30)


def test_exact_and_user_modes_need_more():
    m = ArrayMapping("os", 4, 4, 300, 300, 64)
    base = limits.asic_mapping_bytes(m.rows_per_fold, m.folds)
    for kw in ({"dram_exact": True, "user_mode": False}, {"dram_exact": False, "user_mode": True}):
        with pytest.raises(limits.LimitError):
            limits.check_asic_mappings("l", [m], available=base, **kw)
    limits.check_asic_mappings("l", [m], dram_exact=False, user_mode=False, available=base)


def test_fpga_bound_covers_the_measured_peak():
    from qatlab.hw.fpga.analytic import analyze

    layers = [Layer("c1", 30, 30, 3, 3, 1, 32), Layer("c2", 16, 16, 3, 3, 32, 64), Layer.gemm("f1", 1, 128, 3136)]
    seen: dict[str, int] = {}
    real = limits.check_fpga_schedule

    def spy(geoms, folds, available=None):
        seen["bound"] = limits.fpga_schedule_bytes(limits.fpga_stream_words(geoms, folds))
        return real(geoms, folds, available)

    limits.check_fpga_schedule = spy
    tracemalloc.start()
    try:
        analyze(layers, "U250", target_fps=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        limits.check_fpga_schedule = real
    assert seen["bound"] >= peak


def test_fpga_refuses_a_schedule_that_cannot_fit_but_runs_without_it():
    from qatlab.hw.fpga.analytic import analyze

    big = [Layer("big", 10**12, 3, 3, 3, 1, 8)]
    with pytest.raises(limits.LimitError, match="stream schedule"):
        analyze(big, "ZCU104")
    assert analyze(big, "ZCU104", schedule=False).fits in (True, False)


@pytest.mark.parametrize("dataflow", ["os", "is"])
def test_asic_bound_covers_the_measured_peak_of_the_exact_dram_replay(dataflow):
    cfg = ArrayConfig(rows=4, cols=4, dataflow=dataflow, ifmap_sram_kb=1, filter_sram_kb=1, ofmap_sram_kb=1, dram_model="exact")
    layer = Layer.gemm("g", 200, 200, 32)
    m = ArrayMapping(dataflow, 4, 4, layer.M, layer.N, layer.K)
    tracemalloc.start()
    try:
        simulate([layer], cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = limits.asic_mapping_bytes(m.rows_per_fold, m.folds) + limits.ASIC_BYTES_PER_REPLAYED_READ * (
        m.sram_ifmap_reads + m.sram_filter_reads
    )
    assert bound >= peak
