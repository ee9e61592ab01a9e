"""prepare_qat: rewrite any float model built from the supported layers into a QAT model.

The model is traced with ``torch.fx``; patterns are fused into the QAT modules:

    Conv2d [-> BatchNorm2d] [-> ReLU | clamp] [-> MaxPool2d]  ->  QuantConv2d
    Linear [-> ReLU | clamp]                                  ->  QuantLinear
    a + b [-> ReLU | clamp]                                   ->  QuantAdd
    a * b [-> ReLU | clamp]                                   ->  QuantMul
    torch.cat                                                 ->  QuantCat
    x.mean(dims) / torch.mean                                 ->  QuantMean
    AvgPool2d / AdaptiveAvgPool2d / F.adaptive_avg_pool2d     ->  QuantAvgPool
    Hardswish, Hardsigmoid, SiLU, Sigmoid, Tanh, GELU         ->  QuantLUT
    a clamp no layer absorbed                                 ->  QuantClamp
    each input                                                ->  QuantAct (observed range), then the graph

"clamp" is ReLU6, Hardtanh or clamp, as a module, function or tensor method
(``nn.patterns`` lists every spelling). A max pool right after a conv moves inside
it, before the output quantizer (same values, a quarter of the quantizer work).
Other max pooling, ReLU, reshapes (view, flatten), transposes, chunk/split and
their indexing, Dropout, Identity and contiguous keep the integer grid and stay as
they are. Anything else is an error naming the node and its type.
"""

from __future__ import annotations

import copy
from typing import Iterable, Mapping

import torch
from torch import fx, nn

from qatlab.quant import QuantSpec

from . import patterns as P
from .errors import UnsupportedLayerError
from .fake_quant import FakeQuant, set_calibrating, set_fake_quant, set_observe
from .modules import QuantAct, QuantAdd, QuantAvgPool, QuantCat, QuantClamp, QuantConv2d, QuantLinear, QuantLUT, QuantMean, QuantMul
from .ste import STE_KINDS

PASS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.Flatten) + P.ALIAS_MODS


def _sole_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _activation_after(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[fx.Node | None, bool, P.Bounds | None]:
    """The ReLU or clamp that alone consumes ``node`` (to fuse), as (node, relu, bounds)."""
    nxt = _sole_user(node)
    if nxt is None or not nxt.args or nxt.args[0] is not node:
        return None, False, None
    if P.is_relu(nxt, modules):
        return nxt, True, None
    bounds = P.clamp_bounds(nxt, modules)
    if bounds is not None:
        return nxt, False, bounds
    return None, False, None


def _nonneg(relu: bool, bounds: P.Bounds | None) -> bool:
    return relu or (bounds is not None and bounds[0] is not None and bounds[0] >= 0)


def _specs_for(ste: str, a_spec: QuantSpec, relu: bool) -> tuple[QuantSpec, str]:
    """The output spec and STE of one activation quantizer.

    Non-negative values (after ReLU, ReLU6, a sigmoid) would waste a symmetric signed
    spec's sign bit: they get the unsigned range. PACT clips only such values; other
    outputs (logits, pre-add sums) fall back to the clipped STE with an observed range.
    """
    spec = a_spec
    if relu and a_spec.symmetric and a_spec.is_signed:
        spec = a_spec.with_(signed=False, narrow_range=False)
    if ste == "pact":
        if relu:
            return a_spec.with_(symmetric=True, signed=False, narrow_range=False), "pact"
        return spec, "clipped"
    return spec, ste


def prepare_qat(
    model: nn.Module,
    weight_spec: QuantSpec,
    act_spec: QuantSpec,
    ste: str = "clipped",
    *,
    first_last_bits: int | None = None,
    layer_bits: Mapping[str, tuple[int, ...] | list[int]] | None = None,
) -> fx.GraphModule:
    """A QAT copy of ``model`` (the original is untouched).

    ``ste``: ``identity`` | ``clipped`` | ``lsq`` | ``pact`` (PACT learns activation
    clips; its weights use the clipped STE). ``first_last_bits`` overrides the weight
    bits of the first and last compute layers, the input quantizer and the logits.
    ``layer_bits`` (applied last, so it wins): conv/linear module name -> ``(w_bits,
    a_bits)``, the layer's weight bits and the bits of the quantizer that produces its
    input (layers reading one quantizer must agree on it); and the owner of an
    activation quantizer (an add, a product, a pool, a lookup table, an input; a
    conv/linear's output as ``<name>.act_fq``) -> ``(a_bits,)``, that quantizer's bits.
    """
    if ste not in STE_KINDS:
        raise ValueError(f"ste {ste!r} is unknown; expected one of {', '.join(STE_KINDS)}")
    w_ste = "clipped" if ste == "pact" else ste
    model = copy.deepcopy(model)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types; the user needs to know which model failed
        raise UnsupportedLayerError(f"model {type(model).__name__} cannot be traced by torch.fx: {e}") from e
    modules = dict(gm.named_modules())
    graph = gm.graph
    compute: list[tuple[fx.Node, nn.Module]] = []
    counter = 0

    def fresh(prefix: str) -> str:
        nonlocal counter
        counter += 1
        return f"{prefix}_{counter}"

    erased: set[fx.Node] = set()
    shape_vals = P.shape_values(graph)
    uses = _module_uses(graph)

    def replace(node: fx.Node, prefix: str, module: nn.Module, args: tuple) -> fx.Node:
        """A call of ``module`` in place of ``node``; a module called once keeps its name."""
        if node.op == "call_module" and uses[str(node.target)] == 1:
            _set_module(gm, str(node.target), module)
            node.args, node.kwargs = args, {}
            return node
        name = fresh(prefix)
        gm.add_submodule(name, module)
        with graph.inserting_after(node):
            new = graph.call_module(name, args)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        return new

    def fused_act(node: fx.Node, chain: list[fx.Node]) -> tuple[bool, P.Bounds | None]:
        act, relu, bounds = _activation_after(node, modules)
        if act is not None:
            chain.append(act)
        return relu, bounds

    for node in list(graph.nodes):
        if node in erased or node in shape_vals or node.op in ("placeholder", "output", "get_attr"):
            continue
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        lut = P.lut_fn(node, modules)
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            chain = [node]
            bn = None
            nxt = _sole_user(node)
            if (
                isinstance(mod, nn.Conv2d)
                and nxt is not None
                and nxt.op == "call_module"
                and isinstance(modules[str(nxt.target)], nn.BatchNorm2d)
            ):
                bn = modules[str(nxt.target)]
                chain.append(nxt)
            relu, bounds = fused_act(chain[-1], chain)
            nxt = _sole_user(chain[-1])
            maxpool = None
            if (
                isinstance(mod, nn.Conv2d)
                and nxt is not None
                and nxt.op == "call_module"
                and isinstance(modules[str(nxt.target)], nn.MaxPool2d)
                and not modules[str(nxt.target)].return_indices
            ):
                maxpool = modules[str(nxt.target)]
                chain.append(nxt)
            a_spec, a_ste = _specs_for(ste, act_spec, _nonneg(relu, bounds))
            if isinstance(mod, nn.Conv2d):
                q: nn.Module = QuantConv2d(mod, bn, relu, weight_spec, a_spec, w_ste, a_ste, maxpool)
            else:
                q = QuantLinear(mod, relu, weight_spec, a_spec, w_ste, a_ste)
            q.clamp = bounds
            _set_module(gm, str(node.target), q)
            compute.append((node, q))
            _collapse(graph, chain, erased)
        elif isinstance(mod, nn.BatchNorm2d):
            raise UnsupportedLayerError(f"node {node.name}: BatchNorm2d must directly follow a Conv2d to be folded")
        elif isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            a_spec, a_ste = _specs_for(ste, act_spec, False)
            replace(node, "avgpool", QuantAvgPool(mod, a_spec, a_ste), tuple(node.args))
        elif node.op == "call_function" and node.target in P.ADAPTIVE_FNS:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            a_spec, a_ste = _specs_for(ste, act_spec, False)
            replace(node, "avgpool", QuantAvgPool(nn.AdaptiveAvgPool2d(size), a_spec, a_ste), (node.args[0],))
        elif lut is not None:
            fn, options = lut
            a_spec, a_ste = _specs_for(ste, act_spec, fn in ("sigmoid", "hardsigmoid"))
            replace(node, fn, QuantLUT(fn, a_spec, a_ste, **options), (node.args[0],))
        elif (P.is_add(node) or P.is_mul(node)) and P.is_tensor_pair(node, shape_vals):
            chain: list[fx.Node] = []
            relu, bounds = fused_act(node, chain)
            a_spec, a_ste = _specs_for(ste, act_spec, _nonneg(relu, bounds))
            if P.is_add(node):
                if len(node.kwargs):
                    raise UnsupportedLayerError(f"node {node.name}: add with alpha/out is not supported")
                qm: nn.Module = QuantAdd(relu, a_spec, a_ste)
            else:
                qm = QuantMul(a_spec, a_ste)
                qm.relu = relu
            qm.clamp = bounds
            new = replace(node, "add" if P.is_add(node) else "mul", qm, tuple(node.args))
            _collapse(graph, [new, *chain], erased)
        elif (cat := P.cat_args(node)) is not None:
            a_spec, a_ste = _specs_for(ste, act_spec, False)
            replace(node, "cat", QuantCat(cat[1], a_spec, a_ste), tuple(cat[0]))
        elif (mean := P.mean_args(node)) is not None:
            a_spec, a_ste = _specs_for(ste, act_spec, False)
            replace(node, "mean", QuantMean(mean[0], mean[1], a_spec, a_ste), (node.args[0],))
        elif (bounds := P.clamp_bounds(node, modules)) is not None:
            replace(node, "clamp", QuantClamp(*bounds), (node.args[0],))
        elif isinstance(mod, PASS_MODULES + (QuantAct,)) or (mod is None and P.is_grid_preserving(node, modules)):
            continue
        elif mod is not None:
            raise UnsupportedLayerError(f"node {node.name}: layer {node.target!r} of type {type(mod).__name__} is not supported")
        elif node.op == "call_function":
            raise UnsupportedLayerError(f"node {node.name}: function {getattr(node.target, '__name__', node.target)} is not supported")
        else:
            raise UnsupportedLayerError(f"node {node.name}: method .{node.target}() is not supported")

    for node in [n for n in graph.nodes if n.op == "placeholder"]:
        name = fresh("input_quant")
        # The input's quantizer keeps an observed range whatever the STE (as torch.ao's
        # does): the data's distribution is fixed, and a learned step would need the
        # gradient through the first layer down to the input, which nothing else uses
        # (it made LSQ's training step ~20 % slower on the default CNN).
        gm.add_submodule(name, QuantAct(act_spec, "clipped"))
        with graph.inserting_after(node):
            new = graph.call_module(name, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
        if first_last_bits is not None:
            _override_bits(getattr(gm, name).act_fq, first_last_bits)

    if first_last_bits is not None and compute:
        for _, q in (compute[0], compute[-1]):
            _override_bits(q.weight_fq, first_last_bits)
        _override_bits(compute[-1][1].act_fq, first_last_bits)

    _link_input_quantizers(gm)
    if layer_bits:
        _apply_layer_bits(gm, layer_bits)
    graph.lint()
    gm.recompile()
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _apply_layer_bits(gm: fx.GraphModule, layer_bits: Mapping[str, tuple[int, ...] | list[int]]) -> None:
    """Per-layer weight and input-activation bits, and the bits of quantizers that
    feed no layer. An input quantizer belongs to the module upstream (and may feed
    several layers, or be named on its own too): conflicting requests are an error."""
    modules = dict(gm.named_modules())
    compute = [n for n, m in modules.items() if isinstance(m, (QuantConv2d, QuantLinear))]
    own = _output_quantizers(modules)
    claimed: dict[int, tuple[str, int]] = {}

    def claim(fq: FakeQuant, who: str, bits: int) -> None:
        prev = claimed.setdefault(id(fq), (who, bits))
        if prev[1] != bits:
            how = "read one input quantizer but ask for" if prev[0] in compute and who in compute else "set one activation quantizer to"
            raise UnsupportedLayerError(f"layer_bits: {prev[0]!r} and {who!r} {how} {prev[1]} and {bits} bits")

    for name, bits in layer_bits.items():
        mod = modules.get(name)
        bits = list(bits)
        if isinstance(mod, (QuantConv2d, QuantLinear)):
            if len(bits) != 2:
                raise UnsupportedLayerError(f"layer_bits: {name!r} is a conv/linear layer and takes [w_bits, a_bits], got {bits!r}")
            w_bits, a_bits = (int(b) for b in bits)
            fq = getattr(mod, "_input_fq", None)
            if fq is None:
                raise UnsupportedLayerError(f"layer_bits: the input of {name!r} has no quantizer to set to {a_bits} bits")
            claim(fq, name, a_bits)
            _override_bits(mod.weight_fq, w_bits)
            _override_bits(fq, a_bits)
        elif name in own:
            if len(bits) != 1:
                raise UnsupportedLayerError(f"layer_bits: {name!r} is an activation quantizer's owner and takes [a_bits], got {bits!r}")
            claim(own[name], name, int(bits[0]))
            _override_bits(own[name], int(bits[0]))
        else:
            raise UnsupportedLayerError(
                f"layer_bits names {name!r}, neither a conv/linear layer nor an activation quantizer's owner; "
                f"layers: {', '.join(compute)}; quantizers: {', '.join(own)}"
            )


def _output_quantizers(modules: Mapping[str, nn.Module]) -> dict[str, FakeQuant]:
    """Each module's output quantizer by its ``layer_bits`` one-element key: the module's
    name, or ``<name>.act_fq`` for a conv/linear (its name keys ``[w_bits, a_bits]``)."""
    out: dict[str, FakeQuant] = {}
    for name, m in modules.items():
        fq = getattr(m, "act_fq", None)
        if isinstance(fq, FakeQuant):
            out[f"{name}.act_fq" if isinstance(m, (QuantConv2d, QuantLinear)) else name] = fq
    return out


def _link_input_quantizers(gm: fx.GraphModule) -> None:
    """Tell each module that needs it which quantizers produced its inputs, found
    through grid-preserving ops (pooling, ReLU, reshapes, slices, standalone clamps):
    in eval mode convs, linears, adds, concatenations, averages and products compute
    on exact codes, and standalone clamps clamp at grid points, each as the integer
    model does."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(mod, (QuantConv2d, QuantLinear, QuantClamp, QuantAvgPool, QuantMean)):
            fq = _producer_quantizer(node.args[0], modules)
            if fq is not None:
                mod.set_input_quantizer(fq)
        elif isinstance(mod, (QuantMul, QuantAdd, QuantCat)):
            fqs = [_producer_quantizer(a, modules) for a in node.args]
            if all(f is not None for f in fqs):
                mod.set_input_quantizers(fqs)  # type: ignore[arg-type]


def _producer_quantizer(src: object, modules: dict[str, nn.Module]) -> FakeQuant | None:
    while isinstance(src, fx.Node):
        mod = modules.get(str(src.target)) if src.op == "call_module" else None
        if mod is not None and isinstance(getattr(mod, "act_fq", None), FakeQuant):
            return mod.act_fq
        passthrough = isinstance(mod, QuantClamp) or P.is_grid_preserving(src, modules)
        if not passthrough or not src.args:
            return None
        src = src.args[0]
    return None


def _module_uses(graph: fx.Graph) -> dict[str, int]:
    uses: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            uses[str(n.target)] = uses.get(str(n.target), 0) + 1
    return uses


def _override_bits(fq: FakeQuant, bits: int) -> None:
    fq.spec = fq.spec.with_(bits=bits)


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, leaf, module)


def _collapse(graph: fx.Graph, chain: list[fx.Node], erased: set[fx.Node]) -> None:
    """Route the chain's last output to its first node and delete the rest."""
    head, last = chain[0], chain[-1]
    if last is head:
        return
    last.replace_all_uses_with(head)
    for n in reversed(chain[1:]):
        graph.erase_node(n)
        erased.add(n)


def freeze_bn(model: nn.Module, frozen: bool = True) -> None:
    """Stop using batch statistics: BN layers become their folded, running-stat form."""
    for m in model.modules():
        if isinstance(m, QuantConv2d):
            m.bn_frozen = frozen


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int | None = None) -> int:
    """PTQ calibration: observe ranges on ``batches`` (eval mode, no training).

    Learned quantizers (LSQ, PACT) are initialised from the observed ranges at the end,
    and observation is switched off: the ranges stay as calibrated.
    Returns the number of batches seen.
    """
    was_training = model.training
    model.eval()
    set_observe(model, True)
    set_fake_quant(model, True)
    set_calibrating(model, True)
    n = 0
    try:
        for x in batches:
            if num_batches is not None and n >= num_batches:
                break
            model(x)
            n += 1
    finally:
        set_calibrating(model, False)
        set_observe(model, False)  # ranges are fixed from here on; QAT turns observers back on
        model.train(was_training)
    if n == 0:
        raise ValueError("calibrate: no batches given")
    return n


def quantizers(model: nn.Module) -> list[tuple[str, FakeQuant]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FakeQuant)]
