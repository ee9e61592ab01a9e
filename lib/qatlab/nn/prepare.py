"""prepare_qat: rewrite any float model built from the supported layers into a QAT model.

The model is traced with ``torch.fx``; patterns are fused into the QAT modules:

    Conv2d [-> BatchNorm2d] [-> ReLU] [-> MaxPool2d]  ->  QuantConv2d
    Linear [-> ReLU]                                  ->  QuantLinear
    a + b [-> ReLU]                                   ->  QuantAdd
    AvgPool2d / AdaptiveAvgPool2d                     ->  QuantAvgPool
    each input                                        ->  QuantAct (observed range), then the graph

A max pool right after a conv moves inside it, before the output quantizer (same
values, a quarter of the quantizer work). Other max pooling, ReLU, flatten and
reshapes keep the integer grid and stay as they are.
Anything else is an error naming the node and its type.
"""
from __future__ import annotations

import copy
import operator
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from qatlab.quant import QuantSpec

from .fake_quant import FakeQuant, set_calibrating, set_fake_quant, set_observe
from .modules import QuantAct, QuantAdd, QuantAvgPool, QuantConv2d, QuantLinear
from .ste import STE_KINDS

PASS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
PASS_FUNCTIONS = (F.relu, torch.relu, torch.flatten, F.max_pool2d)
PASS_METHODS = ("view", "reshape", "flatten", "size", "relu", "contiguous")
_RELU_MODS = (nn.ReLU,)
_RELU_FNS = (F.relu, torch.relu)
_ADD_FNS = (operator.add, torch.add)


class UnsupportedLayerError(ValueError):
    """A layer prepare_qat / convert cannot quantize; names the node and its type."""


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _RELU_MODS)
    if node.op == "call_function":
        return node.target in _RELU_FNS
    return node.op == "call_method" and node.target == "relu"


def _sole_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _specs_for(ste: str, a_spec: QuantSpec, relu: bool) -> tuple[QuantSpec, str]:
    """The output spec and STE of one activation quantizer.

    Post-ReLU values are non-negative, so a symmetric signed spec would waste its sign
    bit: they get the unsigned range. PACT clips only post-ReLU values; other outputs
    (logits, pre-add sums) fall back to the clipped STE with an observed range.
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
) -> fx.GraphModule:
    """A QAT copy of ``model`` (the original is untouched).

    ``ste``: ``identity`` | ``clipped`` | ``lsq`` | ``pact`` (PACT learns activation
    clips; its weights use the clipped STE). ``first_last_bits`` overrides the weight
    bits of the first and last compute layers, the input quantizer and the logits.
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
    for node in list(graph.nodes):
        if node in erased:
            continue
        if node.op == "call_module":
            mod = modules[str(node.target)]
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                chain = [node]
                bn = None
                nxt = _sole_user(node)
                if isinstance(mod, nn.Conv2d) and nxt is not None and nxt.op == "call_module" and isinstance(modules[str(nxt.target)], nn.BatchNorm2d):
                    bn = modules[str(nxt.target)]
                    chain.append(nxt)
                    nxt = _sole_user(nxt)
                relu = nxt is not None and _is_relu(nxt, modules)
                if relu:
                    chain.append(nxt)
                    nxt = _sole_user(nxt)
                maxpool = None
                if (
                    isinstance(mod, nn.Conv2d) and nxt is not None and nxt.op == "call_module"
                    and isinstance(modules[str(nxt.target)], nn.MaxPool2d) and not modules[str(nxt.target)].return_indices
                ):
                    maxpool = modules[str(nxt.target)]
                    chain.append(nxt)
                a_spec, a_ste = _specs_for(ste, act_spec, relu)
                if isinstance(mod, nn.Conv2d):
                    q: nn.Module = QuantConv2d(mod, bn, relu, weight_spec, a_spec, w_ste, a_ste, maxpool)
                else:
                    q = QuantLinear(mod, relu, weight_spec, a_spec, w_ste, a_ste)
                _set_module(gm, str(node.target), q)
                compute.append((node, q))
                _collapse(graph, chain, erased)
            elif isinstance(mod, nn.BatchNorm2d):
                raise UnsupportedLayerError(f"node {node.name}: BatchNorm2d must directly follow a Conv2d to be folded")
            elif isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                a_spec, a_ste = _specs_for(ste, act_spec, False)
                q = QuantAvgPool(mod, a_spec, a_ste)
                _set_module(gm, str(node.target), q)
            elif not isinstance(mod, PASS_MODULES + (QuantAct,)):
                raise UnsupportedLayerError(f"node {node.name}: layer {node.target!r} of type {type(mod).__name__} is not supported")
        elif node.op == "call_function":
            if node.target in _ADD_FNS and len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args):
                nxt = _sole_user(node)
                relu = nxt is not None and _is_relu(nxt, modules)
                a_spec, a_ste = _specs_for(ste, act_spec, relu)
                name = fresh("add")
                gm.add_submodule(name, QuantAdd(relu, a_spec, a_ste))
                with graph.inserting_after(node):
                    new = graph.call_module(name, tuple(node.args))
                node.replace_all_uses_with(new)
                graph.erase_node(node)
                if relu:
                    _collapse(graph, [new, nxt], erased)
            elif node.target not in PASS_FUNCTIONS:
                raise UnsupportedLayerError(f"node {node.name}: function {getattr(node.target, '__name__', node.target)} is not supported")
        elif node.op == "call_method" and node.target not in PASS_METHODS:
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
    graph.lint()
    gm.recompile()
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _link_input_quantizers(gm: fx.GraphModule) -> None:
    """Tell each conv/linear which quantizer produced its input, through grid-preserving
    ops (pooling, ReLU, flatten), so that in eval mode its bias can sit on the
    accumulator grid ``s_x·s_w`` exactly as the integer model's int32 bias does."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], (QuantConv2d, QuantLinear)):
            continue
        src = node.args[0]
        while isinstance(src, fx.Node):
            mod = modules.get(str(src.target)) if src.op == "call_module" else None
            if mod is not None and hasattr(mod, "act_fq"):
                modules[str(node.target)].set_input_quantizer(mod.act_fq)
                break
            passthrough = (
                (mod is not None and isinstance(mod, PASS_MODULES))
                or (src.op == "call_function" and src.target in PASS_FUNCTIONS)
                or (src.op == "call_method" and src.target in PASS_METHODS)
            )
            if not passthrough or not src.args:
                break
            src = src.args[0]


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
