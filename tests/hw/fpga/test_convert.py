"""A trained IntModel, streamed: the FPGA reference and the stepped simulation give the
IntModel's own output codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qatlab.hw.fpga import LayerFolding, analyze, reference_forward, simulate
from qatlab.hw.fpga.convert import params_from_intmodel
from qatlab.hw.workload import from_intmodel
from qatlab.intmodel import convert, run
from qatlab.intmodel.reference import quantize_input
from qatlab.nn import calibrate, prepare_qat
from qatlab.quant import QuantSpec


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2)
        self.fc = nn.Linear(54, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("bits", [8, 4])
def test_intmodel_chain_streams_bit_exact(bits):
    torch.manual_seed(0)
    q = prepare_qat(Chain().eval(), QuantSpec(bits=bits, granularity="channel"), QuantSpec(bits=bits, symmetric=False))
    calibrate(q, [torch.randn(16, 1, 9, 9) for _ in range(2)])
    im = convert(q, (1, 9, 9))
    layers = from_intmodel(im)
    params = params_from_intmodel(im)
    x = torch.randn(3, 1, 9, 9)
    want = run(im, x).numpy()  # the IntModel's CPU reference: [3, 5] output codes
    codes = quantize_input(x, im.input_q)  # the IntModel's one float step
    frames = codes.permute(0, 2, 3, 1).reshape(3, -1).to(torch.int64).numpy()  # HWC streams
    got = np.stack([reference_forward(layers, params, f)[-1].reshape(-1) for f in frames])
    assert np.array_equal(got, want)
    folds = {layers[0].name: LayerFolding(2, 3), layers[1].name: LayerFolding(3, 4), layers[2].name: LayerFolding(5, 6)}
    sim = simulate(layers, params, folds, frames)
    assert np.array_equal(sim.outputs.reshape(3, -1), want)
    rep = analyze(layers, "ZCU104", folding=folds, params=params)
    assert all(r.acc_bits_tight is not None and r.acc_bits <= r.acc_bits_worst for r in rep.layers)
