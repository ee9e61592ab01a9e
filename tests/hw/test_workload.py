import pytest

from qatlab.hw.workload import Layer, TopologyError, read_topology, write_topology


def test_conv_topology_no_padding(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(
        "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
        "Conv1, 32, 32, 3, 3, 3, 16, 1,\n"
        "Conv2, 30, 30, 3, 3, 16, 32, 2, 2:4,\n"
        "Conv3, 14, 14, 3, 3, 32, 32, 1, #dw, 1\n"
    )
    a, b, c = read_topology(f)
    assert c.sparsity == (1, 1)  # notes after the geometry are ignored, as SCALE-Sim does
    assert (a.ofmap_h, a.ofmap_w, a.M, a.N, a.K) == (30, 30, 900, 16, 27)
    assert (b.ofmap_h, b.M, b.sparsity) == (14, 196, (2, 4))
    assert a.macs == 900 * 16 * 27


def test_gemm_topology(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("Layer, M, N, K,\nfc1, 64, 10, 256,\n")
    (fc,) = read_topology(f)
    assert (fc.M, fc.N, fc.K, fc.kind) == (64, 10, 256, "gemm")


def test_depthwise_expands_per_channel(tmp_path):
    f = tmp_path / "dw.csv"
    f.write_text(
        "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\nDP1, 8, 8, 3, 3, 4, 1, 1,\n"
    )
    layers = read_topology(f)
    assert [lay.name for lay in layers] == [f"DP1Channel_{c}" for c in range(4)]
    assert all(lay.channels == 1 for lay in layers)


@pytest.mark.parametrize(
    "row, msg",
    [
        ("c, 32, x, 3, 3, 3, 16, 1,", "IFMAP Width"),
        ("c, 32, 32, 3, 3, 3,", "at least 8 fields"),
        ("c, 2, 2, 3, 3, 3, 16, 1,", "larger than"),
        ("c, 32, 32, 3, 3, 3, 16, 1, 5:4,", "sparsity"),
        ("c, 32, 32, 3, 3, 0, 16, 1,", "Channels"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, msg):
    f = tmp_path / "bad.csv"
    f.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n" + row + "\n")
    with pytest.raises(TopologyError, match=msg) as e:
        read_topology(f)
    assert "bad.csv:2" in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(TopologyError, match="cannot read"):
        read_topology(tmp_path / "nope.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(TopologyError, match="empty"):
        read_topology(tmp_path / "e.csv")


def test_write_read_round_trip(tmp_path):
    layers = [Layer("a", 28, 28, 5, 5, 1, 6), Layer("b", 12, 12, 5, 5, 6, 16, 2, 2, sparsity=(1, 2))]
    write_topology(layers, tmp_path / "o.csv")
    back = read_topology(tmp_path / "o.csv")
    assert back == layers
    assert not (tmp_path / "o.csv.tmp").exists()


def test_from_intmodel_matches_conv_geometry():
    import torch
    from torch import nn

    from qatlab.hw.workload import from_intmodel
    from qatlab.intmodel import convert
    from qatlab.nn import calibrate, prepare_qat
    from qatlab.quant import QuantSpec

    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.Flatten(), nn.Linear(6 * 4 * 4, 10))
    q = prepare_qat(m, QuantSpec(bits=4, granularity="channel"), QuantSpec(bits=8, symmetric=False))
    calibrate(q, [torch.randn(4, 1, 10, 10)])
    layers = from_intmodel(convert(q, (1, 10, 10)))
    a, b, c = layers
    assert (a.ifmap_h, a.filter_h, a.channels, a.num_filters, a.ofmap_h, a.w_bits, a.a_bits) == (12, 3, 1, 4, 10, 4, 8)
    assert (b.ifmap_h, b.stride_h, b.ofmap_h, b.M, b.K) == (10, 2, 4, 16, 36)
    assert (c.kind, c.M, c.N, c.K) == ("gemm", 1, 10, 96)
    conv_macs = 10 * 10 * 4 * 9 + 4 * 4 * 6 * 36
    assert sum(lay.macs for lay in layers) == conv_macs + 960
