"""convert(): a trained QAT model (from prepare_qat) -> IntModel.

Walks the fx graph in order, tracking each value's activation qparams. Weights are
taken after BN folding, quantized with the layer's own quantizer (observed or
learned scale); the bias goes onto the accumulator's scale ``s_x·s_w`` (int32);
the requantization multiplier ``M = s_x·s_w/s_y`` is stored both as float64 and
as gemmlowp fixed point, and ``rounding`` picks which one the executors use.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from qatlab.nn import QuantAct, QuantAdd, QuantAvgPool, QuantConv2d, QuantLinear, UnsupportedLayerError
from qatlab.nn.fake_quant import FakeQuant
from qatlab.quant import QParams, quantize, quantize_multiplier

from .model import ActQ, IntModel, IntOp

_RELU = (F.relu, torch.relu)
_FLATTEN_FNS = (torch.flatten,)


def _act_q(fq: FakeQuant) -> ActQ:
    qp = fq.qparams()
    if qp.scale.numel() != 1:
        raise UnsupportedLayerError(f"activation quantizer {fq.extra_repr()} is not per tensor; the integer model needs per-tensor activations")
    return ActQ(float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax)


def _weights(m: QuantConv2d | QuantLinear, name: str, s_x: float) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with torch.no_grad():
        w, b = m.folded()
        w, b = w.detach().float().cpu(), b.detach().float().cpu()
        spec = m.weight_fq.spec
        if spec.granularity_kind not in ("tensor", "channel") or (spec.granularity_kind == "channel" and spec.axis % w.dim() != 0):
            raise UnsupportedLayerError(
                f"layer {name}: weight granularity {spec.granularity!r} (axis {spec.axis}) cannot run on int32 accumulators "
                "with one requantization per output channel; use 'tensor' or 'channel' (axis 0)"
            )
        qp: QParams = m.weight_fq.qparams(tuple(w.shape))
        if bool((qp.zero_point != 0).any()):
            raise UnsupportedLayerError(f"layer {name}: weights must be quantized symmetrically (zero point 0) for the integer model")
        qp = QParams(qp.scale.cpu(), qp.zero_point.cpu(), qp.qmin, qp.qmax, qp.layout)
        wq, _ = quantize(w, spec, qp)
        out_ch = w.shape[0]
        s_w = qp.scale.double().expand(out_ch) if qp.scale.numel() == 1 else qp.scale.double()
    acc_scale = s_x * s_w
    bias = torch.round(b.double() / acc_scale)
    if bool((bias.abs() > 2**31 - 1).any()):
        raise UnsupportedLayerError(f"layer {name}: bias does not fit int32 on the accumulator scale")
    container = torch.int8 if spec.bits <= 8 else torch.int16
    return {
        "weight": wq.to(container),
        "bias": bias.to(torch.int32),
        "w_scale": s_w.float(),
    }, {"w_bits": spec.bits, "w_qmin": qp.qmin, "w_qmax": qp.qmax}


def _requant_tensors(real: torch.Tensor) -> dict[str, torch.Tensor]:
    m, s = quantize_multiplier(real)
    return {"multiplier": real.double(), "fixed_multiplier": torch.from_numpy(m), "shift": torch.from_numpy(s)}


def convert(qat_model: fx.GraphModule, input_shape: tuple[int, ...], rounding: str = "float", meta: dict[str, Any] | None = None) -> IntModel:
    """The integer model of ``qat_model`` for inputs of shape ``input_shape`` (no batch dim)."""
    if rounding not in ("float", "fixed"):
        raise ValueError(f"rounding {rounding!r} is unknown; expected 'float' or 'fixed'")
    if not isinstance(qat_model, fx.GraphModule):
        raise TypeError("convert needs the model returned by prepare_qat (a torch.fx.GraphModule)")
    gm = qat_model
    was_training = gm.training
    gm.eval()
    try:
        device = next((p.device for p in gm.parameters()), torch.device("cpu"))
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros((2, *input_shape), device=device))
        return _walk(gm, tuple(input_shape), rounding, meta or {})
    finally:
        gm.train(was_training)


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)[1:]


def _walk(gm: fx.GraphModule, input_shape: tuple[int, ...], rounding: str, meta: dict[str, Any]) -> IntModel:
    modules = dict(gm.named_modules())
    q_of: dict[str, ActQ] = {}  # value name -> its qparams
    ops: list[IntOp] = []
    alias: dict[str, str] = {}  # no-op nodes (Identity, Dropout, contiguous) -> the value they pass on
    input_name = output_name = None

    def ref(arg: fx.Node) -> str:
        return alias.get(arg.name, arg.name)

    def need_q(arg: Any, who: str) -> ActQ:
        if not isinstance(arg, fx.Node) or ref(arg) not in q_of:
            raise UnsupportedLayerError(f"node {who}: its input is not a quantized value (missing input quantizer?)")
        return q_of[ref(arg)]

    def emit(kind: str, node: fx.Node, inputs: list[fx.Node | str], out_q: ActQ, attrs: dict[str, Any] | None = None, tensors: dict[str, torch.Tensor] | None = None, name: str | None = None) -> None:
        name = name or node.name
        attrs = dict(attrs or {})
        attrs.setdefault("out_shape", _shape(node))
        ops.append(IntOp(kind, name, [i if isinstance(i, str) else ref(i) for i in inputs], name, out_q, attrs, tensors or {}))
        q_of[name] = out_q

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if input_name is not None:
                raise UnsupportedLayerError("the integer model takes one input; the model has several")
            input_name = node.name
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise UnsupportedLayerError("the model must return one tensor")
            need_q(out, "output")
            output_name = ref(out)
        elif node.op == "call_module":
            mod = modules[str(node.target)]
            src = node.args[0] if node.args else None
            if isinstance(mod, QuantAct):
                if not (isinstance(src, fx.Node) and src.op == "placeholder"):
                    raise UnsupportedLayerError(f"node {node.name}: QuantAct is only supported on the model input")
                emit("quantize", node, [src], _act_q(mod.act_fq), {"in_shape": _shape(node)})
            elif isinstance(mod, (QuantConv2d, QuantLinear)):
                xq = need_q(src, node.name)
                yq = _act_q(mod.act_fq)
                tensors, attrs = _weights(mod, node.name, xq.scale)
                real = tensors["w_scale"].double() * xq.scale / yq.scale
                tensors.update(_requant_tensors(real))
                attrs.update(relu=mod.relu, in_shape=_shape(src), a_bits=xq.bits)
                if isinstance(mod, QuantConv2d):
                    c = mod.conv
                    attrs.update(stride=tuple(c.stride), padding=tuple(c.padding), dilation=tuple(c.dilation), groups=c.groups, kernel=tuple(c.kernel_size))
                    if mod.maxpool is None:
                        emit("conv", node, [src], yq, attrs, tensors)
                    else:
                        # The QAT module pools before quantizing; the integer model pools
                        # the requantized codes: the same values, as both are monotone.
                        attrs["out_shape"] = _conv_out_shape(c, _shape(src))
                        emit("conv", node, [src], yq, attrs, tensors)
                        pool_name = f"{node.name}_pool"
                        emit("maxpool", node, [node.name], yq, _maxpool_attrs(mod.maxpool), name=pool_name)
                        alias[node.name] = pool_name
                else:
                    emit("linear", node, [src], yq, attrs, tensors)
            elif isinstance(mod, QuantAdd):
                a, b = node.args
                qa, qb = need_q(a, node.name), need_q(b, node.name)
                yq = _act_q(mod.act_fq)
                tensors = {}
                for tag, q in (("a", qa), ("b", qb)):
                    for k, v in _requant_tensors(torch.tensor([q.scale / yq.scale])).items():
                        tensors[f"{k}_{tag}"] = v
                    tensors[f"real_{tag}"] = torch.tensor([q.scale / yq.scale], dtype=torch.float64)
                emit("add", node, [a, b], yq, {"relu": mod.relu}, tensors)
            elif isinstance(mod, QuantAvgPool):
                xq = need_q(src, node.name)
                yq = _act_q(mod.act_fq)
                emit("avgpool", node, [src], yq, _pool_attrs(mod.pool, _shape(src), node.name, xq, yq), {})
            elif isinstance(mod, nn.MaxPool2d):
                xq = need_q(src, node.name)
                emit("maxpool", node, [src], xq, _maxpool_attrs(mod))
            elif isinstance(mod, nn.ReLU):
                emit("relu", node, [src], need_q(src, node.name))
            elif isinstance(mod, nn.Flatten):
                _flatten(node, src, emit, need_q)
            elif isinstance(mod, (nn.Identity, nn.Dropout)):
                need_q(src, node.name)
                alias[node.name] = ref(src)
            else:
                raise UnsupportedLayerError(f"node {node.name}: layer {node.target!r} of type {type(mod).__name__} is not supported by the integer model")
        elif node.op == "call_function":
            src = node.args[0]
            if node.target in _RELU:
                emit("relu", node, [src], need_q(src, node.name))
            elif node.target in _FLATTEN_FNS:
                _flatten(node, src, emit, need_q)
            elif node.target is F.max_pool2d:
                raise UnsupportedLayerError(f"node {node.name}: use nn.MaxPool2d rather than F.max_pool2d")
            elif node.target in (getattr, operator.getitem):
                continue
            else:
                raise UnsupportedLayerError(f"node {node.name}: function {getattr(node.target, '__name__', node.target)} is not supported by the integer model")
        elif node.op == "call_method":
            if node.target == "size":
                continue
            if node.target in ("view", "reshape", "flatten"):
                _flatten(node, node.args[0], emit, need_q)
            elif node.target == "relu":
                emit("relu", node, [node.args[0]], need_q(node.args[0], node.name))
            elif node.target == "contiguous":
                need_q(node.args[0], node.name)
                alias[node.name] = ref(node.args[0])
            else:
                raise UnsupportedLayerError(f"node {node.name}: method .{node.target}() is not supported by the integer model")
    if input_name is None or output_name is None or not ops or ops[0].kind != "quantize":
        raise UnsupportedLayerError("the model must start with its input quantizer (use prepare_qat)")
    model = IntModel(ops, input_name, output_name, input_shape, rounding, meta)
    model.validate()
    return model


def _flatten(node: fx.Node, src: Any, emit: Any, need_q: Any) -> None:
    out = _shape(node)
    if len(out) != 1:
        raise UnsupportedLayerError(f"node {node.name}: only flattening to [batch, features] is supported, got shape {out}")
    emit("flatten", node, [src], need_q(src, node.name), {"out_shape": out})


def _maxpool_attrs(mod: nn.MaxPool2d) -> dict[str, Any]:
    return {"kernel": _pair(mod.kernel_size), "stride": _pair(mod.stride or mod.kernel_size), "padding": _pair(mod.padding), "dilation": _pair(mod.dilation), "ceil_mode": mod.ceil_mode}


def _conv_out_shape(c: nn.Conv2d, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    hw = [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(in_shape[1:], _pair(c.padding), _pair(c.dilation), _pair(c.kernel_size), _pair(c.stride))
    ]
    return (c.out_channels, hw[0], hw[1])


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _pool_attrs(pool: nn.Module, in_shape: tuple[int, ...], name: str, xq: ActQ, yq: ActQ) -> dict[str, Any]:
    c, h, w = in_shape
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        out = _pair(pool.output_size)
        if h % out[0] or w % out[1]:
            raise UnsupportedLayerError(f"node {name}: AdaptiveAvgPool2d to {out} needs the input {h}x{w} to divide evenly")
        k = (h // out[0], w // out[1])
        stride, padding = k, (0, 0)
    else:
        k = _pair(pool.kernel_size)
        stride = _pair(pool.stride or pool.kernel_size)
        padding = _pair(pool.padding)
        if getattr(pool, "divisor_override", None):
            raise UnsupportedLayerError(f"node {name}: AvgPool2d divisor_override is not supported")
    count = k[0] * k[1]
    real = torch.tensor([xq.scale / (count * yq.scale)], dtype=torch.float64)
    attrs = {"kernel": k, "stride": stride, "padding": padding, "count": count}
    m, s = quantize_multiplier(real)
    attrs.update(multiplier=float(real), fixed_multiplier=int(m[0]), shift=int(s[0]))
    return attrs
