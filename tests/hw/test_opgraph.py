"""The IntModel op inventory both simulators share: roles, shapes, work counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qatlab.hw.opgraph import OpInfo, UnsupportedOpError, adaptive_bins, op_infos, stream_dims
from qatlab.hw.workload import from_intmodel, group_layers

from .int_nets import U8, every_kind, op


def test_every_op_gets_a_role_and_shapes():
    m = every_kind()
    infos = op_infos(m)
    assert [i.name for i in infos] == [o.name for o in m.ops]
    role = {i.name: i.role for i in infos}
    assert role["c1"] == role["fc"] == "gemm" and role["dw"] == role["gc"] == "grouped"
    assert {role[n] for n in ("sl", "pm", "rs", "fl")} == {"passthrough"}
    assert {role[n] for n in ("q", "act", "mp", "ap", "aap", "se", "gate", "res", "cat", "cl", "rl")} == {"vector"}
    by = {i.name: i for i in infos}
    assert by["dw"].depthwise and not by["gc"].depthwise and by["gc"].groups == 2
    assert by["gate"].in_shapes == ((8, 1, 1), (8, 3, 3)) and by["q"].in_bits == (32,)
    assert by["cat"].requantized_inputs() == (0,)  # input 1 already has the output's qparams
    assert by["mp"].reduction_taps() == 8 * 5 * 5 * 4 and by["se"].reduction_taps() == 8 * 9


def _brute_bins(n: int, o: int) -> list[int]:
    # PyTorch's definition, element by element: bin i covers [floor(i·n/o), ceil((i+1)·n/o)).
    return [len(range(math.floor(i * n / o), math.ceil((i + 1) * n / o))) for i in range(o)]


@given(st.integers(1, 40), st.integers(1, 40))
def test_adaptive_bins_match_pytorch_definition(n, o):
    assert adaptive_bins(n, o) == _brute_bins(n, o)


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 6), st.integers(1, 6))
def test_adaptive_pool_taps_equal_torch_bins(h, w, oh, ow):
    pool = op("avgpool", "aap", ["x"], U8, (2, oh, ow), adaptive=True, output_size=(oh, ow))
    info = OpInfo(pool, "vector", ((2, h, w),), (U8,), (2, oh, ow))
    # PyTorch itself: pooling the one-hot image of pixel p is non-zero exactly in the
    # bins that contain p, so the non-zeros count every (bin, tap) pair.
    onehot = torch.eye(h * w).reshape(h * w, 1, h, w)
    taps = int((torch.nn.functional.adaptive_avg_pool2d(onehot, (oh, ow)) > 0).sum())
    assert info.reduction_taps() == 2 * taps


def test_unknown_kind_and_missing_shape_are_typed_errors():
    m = every_kind()
    m.ops.insert(3, op("softmax", "sm", ["dw"], U8, (8, 10, 10)))
    with pytest.raises(UnsupportedOpError, match="'sm'.*softmax"):
        op_infos(m)
    m = every_kind()
    del m.ops[2].attrs["out_shape"]
    with pytest.raises(UnsupportedOpError, match="out_shape"):
        op_infos(m)


def test_stream_dims():
    assert stream_dims((8, 3, 3)) == (9, 8) and stream_dims((10,)) == (1, 10) and stream_dims((3, 3, 12)) == (36, 3)


def test_group_layers_are_scalesim_per_group_layers():
    m = every_kind()
    dw = m.ops[2]
    layers = group_layers(dw)
    assert [lay.name for lay in layers] == [f"dw.g{i}" for i in range(8)]
    assert all((lay.channels, lay.num_filters, lay.ifmap_h, lay.filter_h) == (1, 1, 12, 3) for lay in layers)
    assert sum(lay.macs for lay in layers) == 8 * 10 * 10 * 9
    per_op = from_intmodel(m)
    split = from_intmodel(m, per_group=True)
    assert len(split) == len(per_op) - 2 + 8 + 2  # dw: 8 groups, gc: 2 groups
    assert sum(lay.macs for lay in split) == sum(lay.macs for lay in per_op)
