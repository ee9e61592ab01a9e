"""From a trained IntModel to this package's integer layer parameters.

:func:`qatlab.hw.workload.from_intmodel` gives the layer list (padding folded into the
input size); :func:`params_from_intmodel` gives, in the same order, one
:class:`.reference.IntLayer` per conv/linear op, in the FPGA datapath's conventions:

* weight columns in (kernel row, kernel column, channel) order — the SWU's window
  order — from PyTorch's (out, in, kh, kw); a dilated kernel becomes its effective
  extent with zeros in the holes; a linear layer reading a flattened C x H x W tensor
  gets its columns permuted from CHW to the stream's HWC order;
* the input zero point folded into the bias, ``b' = b − z_in · Σ w`` (the datapath
  multiplies raw codes, as FINN's streamlined graphs do);
* requantization by the float multiplier (``float`` rounding); the activation's lower
  clamp is the output zero point when the op has a fused ReLU, as in the IntModel.

With these, :func:`.reference.reference_forward` reproduces the IntModel's codes for a
chain of conv/linear ops (tests check it); pooling, padding, residual adds are not
streaming stages of this model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ParamsError
from .reference import IntLayer


def _ints(t: Any) -> np.ndarray:
    """A torch integer tensor as int64 numpy (torch is only needed for IntModel inputs)."""
    import torch

    return t.to(dtype=torch.int64).cpu().numpy()


def _weights_hwc(op: Any) -> np.ndarray:
    w = _ints(op.tensors["weight"])
    if op.kind == "linear":
        return w
    o, cin_g, kh, kw = w.shape
    dh, dw = op.attrs.get("dilation", (1, 1))
    if (dh, dw) != (1, 1):
        full = np.zeros((o, cin_g, (kh - 1) * dh + 1, (kw - 1) * dw + 1), dtype=np.int64)
        full[:, :, ::dh, ::dw] = w
        w = full
    return w.transpose(0, 2, 3, 1).reshape(o, -1)


def params_from_intmodel(model: Any) -> list[IntLayer]:
    """One IntLayer per conv/linear op of ``model`` (an :class:`qatlab.intmodel.IntModel`)."""
    produced = {op.output: op for op in model.ops}
    out: list[IntLayer] = []
    for op in model.compute_ops():
        src = op.inputs[0]
        prod = produced.get(src)
        if prod is None:
            raise ParamsError(f"op {op.name!r}: its input {src!r} is not produced by an op of the model")
        in_q = prod.out_q
        w = _weights_hwc(op)
        if op.kind == "linear" and (
            prod.kind == "flatten" or (prod.kind == "reshape" and len(tuple(prod.attrs.get("out_shape", ()))) == 1)
        ):
            # The IntModel flattens NCHW; the stream carries HWC: permute the columns.
            feeder = produced.get(prod.inputs[0])
            shape = tuple(feeder.attrs.get("out_shape", ())) if feeder is not None else ()
            if len(shape) == 3 and shape[1] * shape[2] > 1:
                c, h, wd = shape
                perm = np.arange(c * h * wd).reshape(c, h, wd).transpose(1, 2, 0).ravel()
                w = w[:, perm]
        bias = _ints(op.tensors["bias"])
        bias = bias - in_q.zero_point * w.sum(axis=1)
        yq = op.out_q
        lo = yq.zero_point if op.attrs.get("relu") else yq.qmin
        mult = op.tensors["multiplier"].double().cpu().numpy()
        out.append(IntLayer(w, bias, mult, int(yq.zero_point), int(lo), int(yq.qmax), in_signed=in_q.qmin < 0))
    return out
