"""The peer: torch.ao.quantization's QAT (FX graph mode, default qconfig) on the same model.

Shared by benchmarks/qat_step.py and benchmarks/accuracy.py. torch.ao is deprecated
upstream but still ships in torch 2.13; its default x86 qconfig uses per-channel
symmetric int8 weights and quint8 activations with reduce_range (7-bit activations).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def torch_ao_qat(fp32: nn.Module, example: torch.Tensor) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import copy

        from torch.ao.quantization import get_default_qat_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        m = copy.deepcopy(fp32).train()
        return prepare_qat_fx(m, get_default_qat_qconfig_mapping("x86"), (example,))


def torch_ao_freeze(model: nn.Module) -> None:
    """torch.ao's late-training switches: freeze BN statistics and observers."""
    from torch.ao.nn.intrinsic import qat as nniqat
    from torch.ao.quantization import disable_observer

    model.apply(disable_observer)
    model.apply(nniqat.freeze_bn_stats)
