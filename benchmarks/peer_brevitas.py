"""The second peer: Brevitas QAT from the same FP32 model, data, loop, epochs and seed.

Brevitas is not a dependency of qatlab; install it beside the venv to run this:

    pip install --target /tmp/brevitas --no-deps brevitas==0.13.4 dependencies==2.0.1 unfoldNd
    PYTHONPATH=/tmp/brevitas QATLAB_CACHE=C python benchmarks/peer_brevitas.py --model mobilenet \
        --profile quick --epochs 4 --qat-epochs 3 --bits 4 --threads 1 --json brevitas.json

The Brevitas side mirrors qatlab's low-bit recipe as closely as its graph quantizer
allows: ``preprocess_for_quantize`` (FX trace, BN merged into the convs, ReLU6 kept as
ReLU6), ``quantize`` with per-channel symmetric weights whose learned scale starts from
the MSE optimum (``Int8WeightPerChannelFloatMSE`` at ``--bits``), per-tensor activations
with learned scales started from runtime statistics (``Uint8/Int8ActPerTensorFloat`` at
``--bits``), the model input and the first and last compute layers' weights at 8 bits;
then the same Adam + cosine loop (``qatlab.train.fit``) for ``--qat-epochs`` at the
profile's ``qat_lr``. Brevitas quantizes activations at its own places (after ReLU/ReLU6,
before every compute layer, at residual adds); hardswish, hardsigmoid and the SE product
stay float between them, where qatlab quantizes every op's output — so qatlab's network
is the more constrained of the two.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qatlab.atomic import write_json
from qatlab.config import profile
from qatlab.data import load_dataset
from qatlab.timing import machine
from qatlab.train import accuracy, fit, loader, predictions, pretrain_fp32, resolve_device, run_trial, seed_everything


def brevitas_qat_model(fp32: nn.Module, bits: int, edge_bits: int = 8) -> nn.Module:
    import copy

    import brevitas.nn as qnn
    from brevitas.graph.quantize import COMPUTE_LAYER_MAP, QUANT_ACT_MAP, QUANT_IDENTITY_MAP, preprocess_for_quantize, quantize
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloatMSE, Int32Bias, Uint8ActPerTensorFloat

    def w(b: int):
        return Int8WeightPerChannelFloatMSE.let(bit_width=b)

    ua, sa = Uint8ActPerTensorFloat.let(bit_width=bits), Int8ActPerTensorFloat.let(bit_width=bits)
    compute = dict(COMPUTE_LAYER_MAP)
    for cls, qcls in ((nn.Conv2d, qnn.QuantConv2d), (nn.Linear, qnn.QuantLinear)):
        compute[cls] = (qcls, {"weight_quant": w(bits), "bias_quant": Int32Bias, "return_quant_tensor": True})
    acts = dict(QUANT_ACT_MAP)
    acts[nn.ReLU] = (qnn.QuantReLU, {"act_quant": ua, "return_quant_tensor": True})
    acts[nn.ReLU6] = (
        qnn.QuantReLU,
        {**QUANT_ACT_MAP[nn.ReLU6][1], "act_quant": QUANT_ACT_MAP[nn.ReLU6][1]["act_quant"].let(bit_width=bits)},
    )
    ident = {
        "signed": (qnn.QuantIdentity, {"act_quant": sa, "return_quant_tensor": True}),
        "unsigned": (qnn.QuantIdentity, {"act_quant": ua, "return_quant_tensor": True}),
    }
    assert set(ident) == set(QUANT_IDENTITY_MAP)
    m = preprocess_for_quantize(copy.deepcopy(fp32).eval(), relu6_to_relu=False)
    m = quantize(m, quant_identity_map=ident, compute_layer_map=compute, quant_act_map=acts)
    _edges_at(m, edge_bits, w, Int8ActPerTensorFloat.let(bit_width=edge_bits), Uint8ActPerTensorFloat.let(bit_width=edge_bits))
    return m


def _edges_at(m: torch.fx.GraphModule, bits: int, weight_quant, signed_act, unsigned_act) -> None:
    """The model input, the first and last compute layers' weights and their outputs at
    ``bits`` (qatlab's ``first_last_bits``): Brevitas's graph quantizer has one map per
    class, so these are rebuilt after it (same weights, same signedness)."""
    import brevitas.nn as qnn
    from brevitas.quant import Int32Bias

    mods = dict(m.named_modules())
    order = [n.target for n in m.graph.nodes if n.op == "call_module"]
    computes = [t for t in order if isinstance(mods[t], (qnn.QuantConv2d, qnn.QuantLinear))]
    edge_acts = [next(t for t in order if isinstance(mods[t], qnn.QuantIdentity))]
    edge_acts += [f"{c.replace('.', '_')}_output_quant" for c in (computes[0], computes[-1])]
    for name in edge_acts:
        if name in mods:
            act = signed_act if mods[name].act_quant.is_signed else unsigned_act
            _replace(m, name, qnn.QuantIdentity(act_quant=act, return_quant_tensor=mods[name].return_quant_tensor))
    for name in (computes[0], computes[-1]):
        old = mods[name]
        if isinstance(old, qnn.QuantConv2d):
            new = qnn.QuantConv2d(
                old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation, old.groups,
                bias=old.bias is not None, weight_quant=weight_quant(bits), bias_quant=Int32Bias,
                return_quant_tensor=old.return_quant_tensor,
            )  # fmt: skip
        else:
            new = qnn.QuantLinear(
                old.in_features, old.out_features, bias=old.bias is not None, weight_quant=weight_quant(bits),
                bias_quant=Int32Bias, return_quant_tensor=old.return_quant_tensor,
            )  # fmt: skip
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        _replace(m, name, new)


def _replace(m: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(m.get_submodule(parent) if parent else m, leaf, new)


def brevitas_peer(prof: str, seed: int, bits: int, **overrides: object) -> dict[str, object]:
    from brevitas.graph.calibrate import calibration_mode

    cfg = profile(prof, **{"method": "qat", "seed": seed, "w_bits": bits, "a_bits": bits, **overrides})
    device = resolve_device(cfg.device)
    splits = load_dataset(cfg.dataset, val_fraction=cfg.val_fraction, limit_train=cfg.limit_train, seed=cfg.seed)
    fp32, _ = pretrain_fp32(cfg, splits, device)
    gen = seed_everything(cfg.seed + 1)
    m = brevitas_qat_model(fp32, bits).to(device)
    data = loader(splits.train, cfg.batch_size, gen, True)
    with torch.no_grad(), calibration_mode(m):
        for i, (x, _) in enumerate(data):
            if i >= cfg.calib_batches:
                break
            m(x.to(device))
    t0 = time.perf_counter()
    fit(m, data, cfg.qat_epochs, cfg.qat_lr, device)
    x, y = splits.test.tensors
    return {
        "name": f"brevitas_qat_w{bits}a{bits}",
        "test_acc": accuracy(predictions(m, x, device), y),
        "train_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--epochs", type=int, default=4, help="FP32 epochs (the cached FP32 model is shared with qatlab's trials)")
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-ours", action="store_true", help="only the Brevitas trial")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    over = {"model": a.model, "epochs": a.epochs, "qat_epochs": a.qat_epochs}
    rows = [brevitas_peer(a.profile, a.seed, a.bits, **over)]
    if not a.skip_ours:
        cfg = profile(
            a.profile, method="qat", seed=a.seed, w_bits=a.bits, a_bits=a.bits, ste="lsq", first_last_bits=8, estimator="mse", **over
        )
        r = run_trial(cfg)
        rows.append(
            {
                "name": f"qatlab_qat_w{a.bits}a{a.bits}_lsq",
                "test_acc": r.get("test_acc"),
                "fp32_acc": r.get("fp32_acc"),
                "status": r["status"],
            }
        )
    for r in rows:
        print(r)
    if a.json:
        write_json(a.json, {"machine": machine(), "args": vars(a), "rows": rows})


if __name__ == "__main__":
    main()
