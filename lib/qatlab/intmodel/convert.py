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

from qatlab.nn import (
    QuantAct,
    QuantAdd,
    QuantAvgPool,
    QuantCat,
    QuantClamp,
    QuantConv2d,
    QuantLinear,
    QuantLUT,
    QuantMean,
    QuantMul,
    UnsupportedLayerError,
)
from qatlab.nn import patterns as P
from qatlab.nn.fake_quant import FakeQuant
from qatlab.nn.modules import adaptive_bin_counts, adaptive_output_size
from qatlab.quant import QParams, quantize, quantize_multiplier
from qatlab.quant.requant import FixedPointRangeError, pre_shift_multiplier

from .model import ActQ, IntModel, IntOp, rescale_bounds
from .reference import quantize_input


def _act_q(fq: FakeQuant) -> ActQ:
    qp = fq.qparams()
    if qp.scale.numel() != 1:
        raise UnsupportedLayerError(
            f"activation quantizer {fq.extra_repr()} is not per tensor; the integer model needs per-tensor activations"
        )
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


def convert(
    qat_model: fx.GraphModule, input_shape: tuple[int, ...], rounding: str = "float", meta: dict[str, Any] | None = None
) -> IntModel:
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
        _propagate_shapes(gm, input_shape, device)
        return _walk(gm, tuple(input_shape), rounding, meta or {})
    finally:
        gm.train(was_training)


def _propagate_shapes(gm: fx.GraphModule, input_shape: tuple[int, ...], device: torch.device) -> None:
    """Every node's output shape, from one float pass on a batch of 1: shapes do not
    depend on quantization, and the fake quantizers were most of a pass's time."""
    fqs = [m for m in gm.modules() if isinstance(m, FakeQuant)]
    flags = [(m.enabled, m.observe) for m in fqs]
    for m in fqs:
        m.enabled = m.observe = False
    try:
        # A real pass, not fake tensors: their first use imports torch._dynamo, which
        # costs more than a batch-1 float pass of a ResNet-50.
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros((1, *input_shape), device=device))
    finally:
        for m, (enabled, observe) in zip(fqs, flags):
            m.enabled, m.observe = enabled, observe


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)[1:]


def _rank(node: fx.Node) -> int:
    return len(node.meta["tensor_meta"].shape)


def _codes(q: ActQ, value: float) -> int:
    """The code of a real value on grid ``q``, in the fake quantizers' float32 arithmetic."""
    return int(quantize_input(torch.tensor([value]), q)[0])


def _clamp_attr(bounds: tuple[float | None, float | None] | None, yq: ActQ) -> dict[str, Any]:
    """A fused clamp as integer bounds on the output codes (monotone rounding makes
    quantize(clamp(y)) == clamp(quantize(y)))."""
    if bounds is None:
        return {}
    lo, hi = bounds
    return {"clamp": (yq.qmin if lo is None else _codes(yq, lo), yq.qmax if hi is None else _codes(yq, hi))}


def _requant_scalar(real: float, suffix: str = "") -> dict[str, torch.Tensor]:
    return {f"{k}{suffix}": v for k, v in _requant_tensors(torch.tensor([real], dtype=torch.float64)).items()}


def _widened_fixed_point(real: torch.Tensor, bound: int, rounding: str, name: str) -> tuple[Any, Any, int]:
    """(fixed_multiplier, shift, pre_shift) of an op whose small integer ``|v| ≤ bound``
    is widened by ``2^pre_shift`` before the fixed-point multiply
    (``pre_shift_multiplier``): ``fixed_multiplier · 2^(shift − 31) = M · 2^−pre_shift``.
    Values too wide for any widening keep ``pre_shift`` 0 and the plain fixed-point
    form, usable by float rounding only; fixed rounding refuses them."""
    try:
        return pre_shift_multiplier(real, bound)
    except FixedPointRangeError as e:
        if rounding == "fixed":
            raise UnsupportedLayerError(
                f"node {name}: values up to {bound} leave the int32 input of fixed-point requantization; "
                "use rounding='float' or narrower activations"
            ) from e
        m, s = quantize_multiplier(real)
        return m, s, 0


def _pre_shifted(real: torch.Tensor, bound: int, rounding: str, name: str, suffix: str = "") -> dict[str, torch.Tensor]:
    """Requantization tensors of a mul, cat input, mean or adaptive pool (see
    :func:`_widened_fixed_point`)."""
    m, s, pre = _widened_fixed_point(real, bound, rounding, name)
    shape = tuple(real.shape)
    return {
        f"multiplier{suffix}": real.double(),
        f"fixed_multiplier{suffix}": torch.from_numpy(m).reshape(shape),
        f"shift{suffix}": torch.from_numpy(s).reshape(shape),
        f"pre_shift{suffix}": torch.tensor([pre], dtype=torch.int32),
    }


def _lut_table(mod: QuantLUT, xq: ActQ, name: str) -> torch.Tensor:
    """``table[c − qmin]`` = the fake-quant model's output code for input code c: the
    module's own function and output quantizer run on every dequantized input code."""
    if xq.bits > 8:
        raise UnsupportedLayerError(f"node {name}: a {mod.fn} table needs inputs of at most 8 bits, got {xq.bits}")
    fq = mod.act_fq
    x = (torch.arange(xq.qmin, xq.qmax + 1, dtype=torch.float32) - xq.zero_point) * torch.tensor(xq.scale, dtype=torch.float32)
    yq = _act_q(fq)
    observe = fq.observe
    fq.observe = False  # a table build is not data; keep the calibrated range as it is
    try:
        with torch.no_grad():
            y = fq(mod.apply_fn(x.to(fq.lo.device))).cpu()
    finally:
        fq.observe = observe
    # y holds k·s_y exactly (k an integer below 2^24): dividing back recovers k.
    return (torch.round(y.double() / yq.scale) + yq.zero_point).clamp(yq.qmin, yq.qmax).to(torch.int32)


def _split_offsets(node: fx.Node, axis: int) -> list[tuple[int, int]]:
    """(start, end) along ``axis`` of each piece of a chunk/split node."""
    metas = node.meta["tensor_meta"]
    bounds, start = [], 0
    for m in metas:
        n = int(m.shape[axis])
        bounds.append((start, start + n))
        start += n
    return bounds


def _split_axis(node: fx.Node) -> int:
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    rank = len(node.args[0].meta["tensor_meta"].shape)
    return int(dim) % rank


def _basic_slices(node: fx.Node) -> list[tuple[int, int, int]]:
    """``x[:, a:b, c:]``-style indexing: contiguous ranges on non-batch axes, as
    (axis, start, end), one slice op each."""
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    shape = tuple(node.args[0].meta["tensor_meta"].shape)
    bad = UnsupportedLayerError(
        f"node {node.name}: indexing {index!r} is not supported; only contiguous ranges on non-batch axes (x[:, a:b]) are"
    )
    if len(index) > len(shape) or not all(isinstance(i, slice) for i in index):
        raise bad
    cuts = []
    for axis, sl in enumerate(index):
        if sl == slice(None):
            continue
        if axis == 0 or not all(v is None or isinstance(v, int) for v in (sl.start, sl.stop, sl.step)):
            raise bad
        start, end, step = sl.indices(int(shape[axis]))
        if step != 1 or end <= start:
            raise bad
        cuts.append((axis, start, end))
    return cuts


def _permutation(node: fx.Node) -> tuple[int, ...]:
    rank = _rank(node)
    if node.target in ("transpose",) or node.target is torch.transpose:
        d0, d1 = (int(d) % rank for d in node.args[1:3])
        perm = list(range(rank))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return tuple(perm)
    dims = node.args[1:] if node.op == "call_method" else node.args[1]
    if node.op == "call_method" and len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    return tuple(int(d) % rank for d in dims)


def _walk(gm: fx.GraphModule, input_shape: tuple[int, ...], rounding: str, meta: dict[str, Any]) -> IntModel:
    modules = dict(gm.named_modules())
    shape_vals = P.shape_values(gm.graph)
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

    def emit(
        kind: str,
        node: fx.Node,
        inputs: list[fx.Node | str],
        out_q: ActQ,
        attrs: dict[str, Any] | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        name = name or node.name
        attrs = dict(attrs or {})
        attrs.setdefault("out_shape", _shape(node))
        if node.op == "call_module":  # reports name layers as the model does ("features.3"), fx as "features_3"
            attrs.setdefault("module", str(node.target))
        ops.append(IntOp(kind, name, [i if isinstance(i, str) else ref(i) for i in inputs], name, out_q, attrs, tensors or {}))
        q_of[name] = out_q

    def pass_through(node: fx.Node) -> bool:
        """Grid-preserving ops: emit their op (or alias them); False if not one."""
        src = node.args[0] if node.args else None
        t = node.target
        if P.is_alias(node, modules):
            need_q(src, node.name)
            alias[node.name] = ref(src)
        elif P.is_relu(node, modules):
            emit("relu", node, [src], need_q(src, node.name))
        elif (
            (node.op == "call_module" and isinstance(modules[str(t)], nn.Flatten))
            or (node.op == "call_function" and t in P.RESHAPE_FNS)
            or (node.op == "call_method" and t in P.RESHAPE_METHODS)
        ):
            _reshape(node, src, emit, need_q)
        elif (node.op == "call_function" and t in P.PERMUTE_FNS) or (node.op == "call_method" and t in P.PERMUTE_METHODS):
            xq = need_q(src, node.name)
            perm = _permutation(node)
            if perm == tuple(range(len(perm))):
                alias[node.name] = ref(src)
            elif perm[0] != 0:
                raise UnsupportedLayerError(f"node {node.name}: a permutation {perm} that moves the batch axis is not supported")
            else:
                emit("permute", node, [src], xq, {"dims": perm})
        elif (node.op == "call_function" and t in P.SPLIT_FNS) or (node.op == "call_method" and t in P.SPLIT_METHODS):
            need_q(src, node.name)  # its pieces become slices where they are used
        elif node.op == "call_function" and t is operator.getitem:
            parent = node.args[0]
            is_split = isinstance(parent, fx.Node) and (
                (parent.op == "call_function" and parent.target in P.SPLIT_FNS)
                or (parent.op == "call_method" and parent.target in P.SPLIT_METHODS)
            )
            if is_split and isinstance(node.args[1], int):
                axis = _split_axis(parent)
                start, end = _split_offsets(parent, axis)[node.args[1]]
                emit("slice", node, [parent.args[0]], need_q(parent.args[0], node.name), {"axis": axis, "start": start, "end": end})
            else:
                xq = need_q(parent, node.name)
                cuts = _basic_slices(node)
                src_name: fx.Node | str = parent
                shape = list(parent.meta["tensor_meta"].shape)[1:]
                for k, (axis, start, end) in enumerate(cuts):
                    shape[axis - 1] = end - start
                    last = k == len(cuts) - 1
                    name = node.name if last else f"{node.name}_axis{axis}"
                    emit("slice", node, [src_name], xq, {"axis": axis, "start": start, "end": end, "out_shape": tuple(shape)}, name=name)
                    src_name = name
                if not cuts:
                    alias[node.name] = ref(parent)
        elif node.op == "call_module" and isinstance(modules[str(t)], nn.MaxPool2d):
            emit("maxpool", node, [src], need_q(src, node.name), _maxpool_attrs(modules[str(t)]))
        else:
            return False
        return True

    for node in gm.graph.nodes:
        if node in shape_vals:
            continue
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
                attrs.update(relu=mod.relu, in_shape=_shape(src), a_bits=xq.bits, **_clamp_attr(mod.clamp, yq))
                if isinstance(mod, QuantConv2d):
                    c = mod.conv
                    attrs.update(
                        stride=tuple(c.stride),
                        padding=tuple(c.padding),
                        dilation=tuple(c.dilation),
                        groups=c.groups,
                        kernel=tuple(c.kernel_size),
                    )
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
                    tensors.update(_requant_scalar(q.scale / yq.scale, f"_{tag}"))
                    tensors[f"real_{tag}"] = torch.tensor([q.scale / yq.scale], dtype=torch.float64)
                emit("add", node, [a, b], yq, {"relu": mod.relu, **_clamp_attr(mod.clamp, yq)}, tensors)
            elif isinstance(mod, QuantMul):
                a, b = node.args
                qa, qb = need_q(a, node.name), need_q(b, node.name)
                yq = _act_q(mod.act_fq)
                real = torch.tensor([qa.scale * qb.scale / yq.scale], dtype=torch.float64)
                tensors = _pre_shifted(real, rescale_bounds("mul", [qa, qb])[0], rounding, node.name)
                emit("mul", node, [a, b], yq, {"relu": mod.relu, **_clamp_attr(mod.clamp, yq)}, tensors)
            elif isinstance(mod, QuantCat):
                yq = _act_q(mod.act_fq)
                tensors = {}
                in_qs = [need_q(a, node.name) for a in node.args]
                for i, (q, bound) in enumerate(zip(in_qs, rescale_bounds("cat", in_qs))):
                    real = torch.tensor([q.scale / yq.scale], dtype=torch.float64)
                    tensors.update(_pre_shifted(real, bound, rounding, node.name, f"_{i}"))
                axis = mod.dim % _rank(node)
                if axis == 0:
                    raise UnsupportedLayerError(f"node {node.name}: concatenation along the batch axis is not supported")
                emit("cat", node, list(node.args), yq, {"axis": axis}, tensors)
            elif isinstance(mod, QuantMean):
                xq = need_q(src, node.name)
                yq = _act_q(mod.act_fq)
                rank = _rank(src)
                dims = tuple(sorted({d % rank for d in mod.dims}))
                if 0 in dims:
                    raise UnsupportedLayerError(f"node {node.name}: a mean over the batch axis is not supported")
                in_full = (0, *_shape(src))
                count = 1
                for d in dims:
                    count *= in_full[d]
                attrs = {"dims": dims, "keepdim": mod.keepdim, "count": count}
                real = torch.tensor([xq.scale / (count * yq.scale)], dtype=torch.float64)
                tensors = _pre_shifted(real, rescale_bounds("mean", [xq], count)[0], rounding, node.name)
                emit("mean", node, [src], yq, attrs, tensors)
            elif isinstance(mod, QuantLUT):
                xq = need_q(src, node.name)
                emit("lut", node, [src], _act_q(mod.act_fq), {"fn": mod.fn}, {"table": _lut_table(mod, xq, node.name)})
            elif isinstance(mod, QuantClamp):
                xq = need_q(src, node.name)
                lo = xq.qmin if mod.lo is None else _codes(xq, mod.lo)
                hi = xq.qmax if mod.hi is None else _codes(xq, mod.hi)
                emit("clamp", node, [src], xq, {"lo": lo, "hi": hi})
            elif isinstance(mod, QuantAvgPool):
                xq = need_q(src, node.name)
                yq = _act_q(mod.act_fq)
                attrs, tensors = _pool_attrs(mod.pool, _shape(src), node.name, xq, yq, rounding)
                emit("avgpool", node, [src], yq, attrs, tensors)
            elif not pass_through(node):
                raise UnsupportedLayerError(
                    f"node {node.name}: layer {node.target!r} of type {type(mod).__name__} is not supported by the integer model"
                )
        elif node.op == "call_function":
            if node.target is F.max_pool2d:
                raise UnsupportedLayerError(f"node {node.name}: use nn.MaxPool2d rather than F.max_pool2d")
            if node.target is getattr:
                continue
            if not pass_through(node):
                raise UnsupportedLayerError(
                    f"node {node.name}: function {getattr(node.target, '__name__', node.target)} is not supported by the integer model"
                )
        elif node.op == "call_method":
            if not pass_through(node):
                raise UnsupportedLayerError(f"node {node.name}: method .{node.target}() is not supported by the integer model")
    if input_name is None or output_name is None or not ops or ops[0].kind != "quantize":
        raise UnsupportedLayerError("the model must start with its input quantizer (use prepare_qat)")
    model = IntModel(ops, input_name, output_name, input_shape, rounding, meta)
    model.validate()
    return model


def _reshape(node: fx.Node, src: Any, emit: Any, need_q: Any) -> None:
    """[N, F] keeps the version-1 ``flatten`` kind; any other shape is a ``reshape``."""
    out = _shape(node)
    emit("flatten" if len(out) == 1 else "reshape", node, [src], need_q(src, node.name), {"out_shape": out})


def _maxpool_attrs(mod: nn.MaxPool2d) -> dict[str, Any]:
    return {
        "kernel": _pair(mod.kernel_size),
        "stride": _pair(mod.stride or mod.kernel_size),
        "padding": _pair(mod.padding),
        "dilation": _pair(mod.dilation),
        "ceil_mode": mod.ceil_mode,
    }


def _conv_out_shape(c: nn.Conv2d, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    hw = [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(in_shape[1:], _pair(c.padding), _pair(c.dilation), _pair(c.kernel_size), _pair(c.stride))
    ]
    return (c.out_channels, hw[0], hw[1])


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _pool_attrs(
    pool: nn.Module, in_shape: tuple[int, ...], name: str, xq: ActQ, yq: ActQ, rounding: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    c, h, w = in_shape
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        out = adaptive_output_size(pool.output_size, (h, w))
        if h % out[0] or w % out[1]:
            return _adaptive_attrs(h, w, out, xq, yq, rounding, name)
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
    # A window sums at most `count` centred codes (padding adds real zeros).
    m, s, pre = _widened_fixed_point(real, rescale_bounds("avgpool", [xq], count)[0], rounding, name)
    attrs.update(multiplier=float(real), fixed_multiplier=int(m[0]), shift=int(s[0]), pre_shift=pre)
    return attrs, {}


def _adaptive_attrs(
    h: int, w: int, out: tuple[int, int], xq: ActQ, yq: ActQ, rounding: str, name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Uneven adaptive bins: one multiplier per output pixel, by its bin's size; one
    pre-shift for all, from the largest bin."""
    count = adaptive_bin_counts(h, w, out)
    real = xq.scale / (count.double() * yq.scale)
    bound = rescale_bounds("avgpool", [xq], int(count.max()))[0]
    return {"adaptive": True, "output_size": out}, {"count": count, **_pre_shifted(real, bound, rounding, name)}
