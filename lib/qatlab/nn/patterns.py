"""Which fx nodes are which op: the one table prepare_qat and convert both read.

A model may spell one op as a module, a function or a tensor method (``nn.ReLU6``,
``F.relu6``, ``x.clamp(0, 6)``); the recognisers here map every spelling onto the
op family and its arguments, so the two passes cannot disagree on what a node is.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import UnsupportedLayerError

Bounds = tuple[float | None, float | None]

RELU_MODS = (nn.ReLU,)
RELU_FNS = (F.relu, torch.relu, torch.relu_, F.relu_)
ADD_FNS = (operator.add, torch.add)
MUL_FNS = (operator.mul, torch.mul)
CAT_FNS = (torch.cat, torch.concat, torch.concatenate)
MEAN_FNS = (torch.mean,)
ADAPTIVE_FNS = (F.adaptive_avg_pool2d,)

# Modules, functions and methods that keep every value on its input's grid.
ALIAS_MODS = (nn.Identity, nn.Dropout)
ALIAS_METHODS = ("contiguous",)
RESHAPE_FNS = (torch.flatten, torch.reshape)
RESHAPE_METHODS = ("view", "reshape", "flatten")
PERMUTE_FNS = (torch.transpose, torch.permute)
PERMUTE_METHODS = ("transpose", "permute")
SPLIT_FNS = (torch.chunk, torch.split)
SPLIT_METHODS = ("chunk", "split")
SHAPE_METHODS = ("size", "dim")
_SHAPE_ARITH = (operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod, operator.neg)

# LUT activations: fn name -> (modules, functions, methods).
LUT_MODS: dict[type, str] = {
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.GELU: "gelu",
}
LUT_FNS: dict[Any, str] = {
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    F.silu: "silu",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    F.gelu: "gelu",
}
LUT_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh", "sigmoid_": "sigmoid", "tanh_": "tanh"}


def _arg(node: fx.Node, i: int, key: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _number(v: Any, who: fx.Node) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _unsupported(f"node {who.name}: clamp bounds must be numbers (got {type(v).__name__})")
    return float(v)


def _unsupported(msg: str) -> Exception:
    return UnsupportedLayerError(msg)


def is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), RELU_MODS)
    if node.op == "call_function":
        return node.target in RELU_FNS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def clamp_bounds(node: fx.Node, modules: dict[str, nn.Module]) -> Bounds | None:
    """The (lo, hi) real bounds if ``node`` is a clamp in any spelling (ReLU6,
    Hardtanh, clamp), else None."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if isinstance(m, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
            return float(m.min_val), float(m.max_val)
        return None
    if node.op == "call_function":
        t = node.target
        if t in (F.relu6,):
            return 0.0, 6.0
        if t in (F.hardtanh, F.hardtanh_):
            return _number(_arg(node, 1, "min_val", -1.0), node), _number(_arg(node, 2, "max_val", 1.0), node)
        if t in (torch.clamp, torch.clip, torch.clamp_):
            return _clamp_args(node)
        return None
    if node.op == "call_method" and node.target in ("clamp", "clamp_", "clip", "clip_"):
        return _clamp_args(node)
    return None


def _clamp_args(node: fx.Node) -> Bounds:
    lo, hi = _number(_arg(node, 1, "min"), node), _number(_arg(node, 2, "max"), node)
    if lo is None and hi is None:
        raise _unsupported(f"node {node.name}: clamp without bounds")
    if lo is not None and hi is not None and lo > hi:
        raise _unsupported(f"node {node.name}: clamp with min {lo} > max {hi}")
    return lo, hi


def lut_fn(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, dict[str, Any]] | None:
    """(fn name, its keyword options) if ``node`` is a table-lookup activation."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        name = LUT_MODS.get(type(m))
        if name is None:
            return None
        return name, ({"approximate": m.approximate} if isinstance(m, nn.GELU) else {})
    if node.op == "call_function" and node.target in LUT_FNS:
        name = LUT_FNS[node.target]
        return name, ({"approximate": _arg(node, 1, "approximate", "none")} if name == "gelu" else {})
    if node.op == "call_method" and node.target in LUT_METHODS:
        return LUT_METHODS[str(node.target)], {}
    return None


def is_tensor_pair(node: fx.Node, shape_values: set[fx.Node]) -> bool:
    """Two tensor operands (not shape arithmetic, not a tensor and a constant)."""
    args = node.args
    return len(args) == 2 and all(isinstance(a, fx.Node) and a not in shape_values for a in args)


def is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADD_FNS) or (node.op == "call_method" and node.target == "add")


def is_mul(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in MUL_FNS) or (node.op == "call_method" and node.target == "mul")


def cat_args(node: fx.Node) -> tuple[list[fx.Node], int] | None:
    if node.op != "call_function" or node.target not in CAT_FNS:
        return None
    xs = _arg(node, 0, "tensors")
    dim = _arg(node, 1, "dim", 0)
    if not isinstance(xs, (list, tuple)) or not all(isinstance(x, fx.Node) for x in xs) or not isinstance(dim, int):
        raise _unsupported(f"node {node.name}: torch.cat needs a list of tensors and a constant dim")
    return list(xs), dim


def mean_args(node: fx.Node) -> tuple[tuple[int, ...], bool] | None:
    if not ((node.op == "call_function" and node.target in MEAN_FNS) or (node.op == "call_method" and node.target == "mean")):
        return None
    dims = _arg(node, 1, "dim")
    keepdim = _arg(node, 2, "keepdim", False)
    if dims is None:
        raise _unsupported(f"node {node.name}: a mean over every axis (the batch too) has no per-sample meaning; give dims")
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if not all(isinstance(d, int) for d in dims) or not isinstance(keepdim, bool):
        raise _unsupported(f"node {node.name}: mean needs constant dims and keepdim")
    return dims, keepdim


def is_alias(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), ALIAS_MODS)
    if node.op == "call_function":
        return node.target is F.dropout
    return node.op == "call_method" and node.target in ALIAS_METHODS


def is_grid_preserving(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Ops whose output values are a subset (or rearrangement) of their input's grid."""
    if is_alias(node, modules) or is_relu(node, modules):
        return True
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), (nn.MaxPool2d, nn.Flatten))
    if node.op == "call_function":
        return node.target in RESHAPE_FNS + PERMUTE_FNS + SPLIT_FNS + (operator.getitem, F.max_pool2d)
    if node.op == "call_method":
        return node.target in RESHAPE_METHODS + PERMUTE_METHODS + SPLIT_METHODS
    return False


def shape_values(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that compute shapes (``x.size()``, ``x.shape[1] // 2``), not tensors."""
    out: set[fx.Node] = set()
    for n in graph.nodes:
        if n.op == "call_method" and n.target in SHAPE_METHODS:
            out.add(n)
        elif n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] in ("shape", "ndim"):
            out.add(n)
        elif n.op == "call_function" and n.target in _SHAPE_ARITH + (operator.getitem,):
            nodes = [a for a in n.args if isinstance(a, fx.Node)]
            if nodes and all(a in out for a in nodes):
                out.add(n)
    return out
