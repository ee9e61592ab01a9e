"""prepare_qat's per-layer bits (layer_bits), through to the IntModel."""

from __future__ import annotations

import pytest
import torch

from qatlab.intmodel import convert
from qatlab.models import build_model
from qatlab.nn import UnsupportedLayerError, calibrate, prepare_qat
from qatlab.quant import QuantSpec

W = QuantSpec(bits=8, symmetric=True, granularity="channel", axis=0)
A = QuantSpec(bits=8, symmetric=False)


def _lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet").eval()


def test_layer_bits_set_weights_and_the_input_quantizer() -> None:
    q = prepare_qat(_lenet(), W, A, "lsq", layer_bits={"4": (2, 4), "11": (4, 2)})
    assert q.get_submodule("4").weight_fq.spec.bits == 2
    assert q.get_submodule("0").act_fq.spec.bits == 4  # layer 4 reads layer 0's output
    assert q.get_submodule("11").weight_fq.spec.bits == 4
    assert q.get_submodule("9").act_fq.spec.bits == 2
    assert q.get_submodule("0").weight_fq.spec.bits == 8  # untouched layers keep w_bits


def test_layer_bits_win_over_first_last_bits() -> None:
    q = prepare_qat(_lenet(), W, A, "lsq", first_last_bits=8, layer_bits={"0": (4, 4)})
    assert q.get_submodule("0").weight_fq.spec.bits == 4
    assert q.get_submodule("input_quant_1").act_fq.spec.bits == 4


def test_intmodel_carries_per_layer_bits() -> None:
    lb = {"0": (8, 8), "4": (4, 8), "9": (2, 4), "11": (4, 2)}
    q = prepare_qat(_lenet(), W, A, "lsq", layer_bits=lb)
    calibrate(q, [torch.rand(16, 1, 28, 28) for _ in range(2)])
    im = convert(q.eval(), (1, 28, 28))
    got = {op.name: (op.attrs["w_bits"], op.attrs["a_bits"]) for op in im.compute_ops()}
    assert got == {"_0": (8, 8), "_4": (4, 8), "_9": (2, 4), "_11": (4, 2)}


def test_bad_layer_bits_are_named() -> None:
    with pytest.raises(UnsupportedLayerError, match="'nope'.*layers: 0, 4, 9, 11"):
        prepare_qat(_lenet(), W, A, "lsq", layer_bits={"nope": (4, 4)})


class _Branches(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 4, 3)
        self.a = torch.nn.Conv2d(4, 4, 1)
        self.b = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.a(h) + self.b(h)


def test_layers_sharing_an_input_must_agree() -> None:
    q = prepare_qat(_Branches(), W, A, "lsq", layer_bits={"a": (4, 4), "b": (2, 4)})
    assert q.get_submodule("stem").act_fq.spec.bits == 4
    with pytest.raises(UnsupportedLayerError, match="'a' and 'b' read one input quantizer but ask for 4 and 2 bits"):
        prepare_qat(_Branches(), W, A, "lsq", layer_bits={"a": (4, 4), "b": (4, 2)})


def test_one_element_entries_set_quantizers_that_feed_no_layer() -> None:
    # the residual sum feeds no conv: only its own [a_bits] entry reaches it
    q = prepare_qat(_Branches(), W, A, "lsq", layer_bits={"a": (4, 4), "b": (4, 4), "add_1": [2], "a.act_fq": [3]})
    assert q.get_submodule("add_1").act_fq.spec.bits == 2
    assert q.get_submodule("a").act_fq.spec.bits == 3  # a layer's output quantizer: <layer>.act_fq
    assert q.get_submodule("b").act_fq.spec.bits == 8  # unnamed: the base bits
    assert q.get_submodule("a").weight_fq.spec.bits == 4
    # the same quantizer through its reader and on its own must agree
    q = prepare_qat(_Branches(), W, A, "lsq", layer_bits={"a": (4, 4), "stem.act_fq": [4]})
    assert q.get_submodule("stem").act_fq.spec.bits == 4
    with pytest.raises(UnsupportedLayerError, match="'a' and 'stem.act_fq' set one activation quantizer to 4 and 2 bits"):
        prepare_qat(_Branches(), W, A, "lsq", layer_bits={"a": (4, 4), "stem.act_fq": [2]})


def test_bad_one_element_entries_are_named() -> None:
    with pytest.raises(UnsupportedLayerError, match="'a' is a conv/linear layer and takes \\[w_bits, a_bits\\], got \\[4\\]"):
        prepare_qat(_Branches(), W, A, "lsq", layer_bits={"a": [4]})
    with pytest.raises(UnsupportedLayerError, match="'add_1' is an activation quantizer's owner and takes \\[a_bits\\]"):
        prepare_qat(_Branches(), W, A, "lsq", layer_bits={"add_1": [4, 4]})
    with pytest.raises(UnsupportedLayerError, match="'stem.act_fq' is an activation quantizer's owner and takes"):
        prepare_qat(_Branches(), W, A, "lsq", layer_bits={"stem.act_fq": [4, 4]})
    with pytest.raises(
        UnsupportedLayerError, match="'relu', neither a conv/linear layer nor an activation quantizer's owner.*quantizers: "
    ):
        prepare_qat(_Branches(), W, A, "lsq", layer_bits={"relu": [4]})
