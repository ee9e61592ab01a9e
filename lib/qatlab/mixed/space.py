"""The decision space: which bit widths a QAT model's layers can take, as knobs.

A layer's choice is ``(w_bits, a_bits)``: its weight bits and the bits of the
activation quantizer feeding it (what its MACs multiply, what ``layer_bits`` sets).
One activation quantizer may feed several layers (a residual stream read by a conv
and an add, a tensor read by two branches), so the search's variables are *knobs*:
one per weight quantizer and one per activation quantizer that feeds a layer. Layers
sharing a quantizer share its knob, and every op's cost depends on the knobs of the
values it reads and writes (:mod:`.costs`).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from torch import fx, nn

from qatlab.nn.fake_quant import FakeQuant
from qatlab.nn.modules import QuantConv2d, QuantLinear

from .errors import MixedPrecisionError


@dataclass(frozen=True)
class Knob:
    name: str  # "w:<layer>" or "a:<module owning the quantizer>"
    kind: str  # "w" | "a"
    domain: tuple[int, ...]


@dataclass(frozen=True)
class LayerSlot:
    name: str  # module name in the model (what layer_bits keys on)
    op: str  # the IntModel op (the fx node) it becomes
    w_knob: int
    a_knob: int


@dataclass(frozen=True)
class DecisionSpace:
    candidates: tuple[int, ...]
    layers: tuple[LayerSlot, ...]
    knobs: tuple[Knob, ...]
    value_knobs: Mapping[str, int] = field(default_factory=dict)  # fx value name -> a-knob of its quantizer

    def layer(self, name: str) -> LayerSlot:
        for s in self.layers:
            if s.name == name:
                return s
        raise MixedPrecisionError(f"no layer {name!r}; layers: {', '.join(s.name for s in self.layers)}")

    def knob_of_value(self, op_name: str) -> int | None:
        """The a-knob of an IntModel op's output (ops ``convert`` splits off keep their node's)."""
        if op_name in self.value_knobs:
            return self.value_knobs[op_name]
        base = re.sub(r"_(pool|axis\d+)$", "", op_name)
        return self.value_knobs.get(base)

    def uniform(self, bits: int) -> tuple[int, ...]:
        """The assignment closest to uniform ``bits``: pinned knobs keep their pin."""
        return tuple(bits if bits in k.domain else k.domain[0] for k in self.knobs)

    def layer_bits(self, assignment: Sequence[int]) -> dict[str, list[int]]:
        """An assignment (one value per knob) as ``TrainConfig.layer_bits``."""
        if len(assignment) != len(self.knobs):
            raise MixedPrecisionError(f"assignment has {len(assignment)} values for {len(self.knobs)} knobs")
        return {s.name: [int(assignment[s.w_knob]), int(assignment[s.a_knob])] for s in self.layers}

    def assignment(self, layer_bits: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
        """The inverse of :meth:`layer_bits` (every layer must be named, consistently)."""
        vals: dict[int, int] = {}
        for s in self.layers:
            if s.name not in layer_bits:
                raise MixedPrecisionError(f"layer_bits does not name layer {s.name!r}")
            w, a = (int(b) for b in layer_bits[s.name])
            for k, v in ((s.w_knob, w), (s.a_knob, a)):
                if vals.setdefault(k, v) != v:
                    raise MixedPrecisionError(f"layer_bits gives {self.knobs[k].name} both {vals[k]} and {v} bits")
        return tuple(vals[k] for k in range(len(self.knobs)))

    def size(self) -> int:
        return int(_prod(len(k.domain) for k in self.knobs))


def _prod(xs: object) -> int:
    out = 1
    for x in xs:  # type: ignore[attr-defined]
        out *= x
    return out


def check_candidates(candidates: Sequence[int]) -> tuple[int, ...]:
    c = tuple(candidates)
    if not c or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8 for b in c) or len(set(c)) != len(c):
        raise MixedPrecisionError(f"candidates must be distinct bit widths in 2..8, got {list(candidates)!r}")
    return tuple(sorted(c))


def decision_space(
    qat_model: fx.GraphModule,
    candidates: Sequence[int] = (2, 4, 8),
    *,
    first_last_bits: int | None = None,
    pins: Mapping[str, Sequence[int]] | None = None,
) -> DecisionSpace:
    """The knobs of a model prepared by ``prepare_qat``.

    ``first_last_bits`` pins the first layer's weights and input and the last layer's
    weights (``prepare_qat``'s rule); ``pins`` fixes any layer to ``(w_bits, a_bits)``.
    """
    cands = check_candidates(candidates)
    modules = dict(qat_model.named_modules())
    quantizer_of: dict[str, FakeQuant | None] = {}
    owner: dict[int, str] = {}
    for name, m in modules.items():
        fq = getattr(m, "act_fq", None)
        if isinstance(fq, FakeQuant):
            owner.setdefault(id(fq), name)
    slots: list[tuple[str, str, FakeQuant]] = []
    for node in qat_model.graph.nodes:
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        fq = getattr(mod, "act_fq", None) if mod is not None else None
        if isinstance(fq, FakeQuant):
            quantizer_of[node.name] = fq
        else:  # grid-preserving ops (pooling, relu, reshapes, clamps) carry their input's grid
            src = next((a for a in node.args if isinstance(a, fx.Node)), None)
            quantizer_of[node.name] = quantizer_of.get(src.name) if src is not None else None
        if isinstance(mod, (QuantConv2d, QuantLinear)):
            inp = getattr(mod, "_input_fq", None)
            if inp is None:
                raise MixedPrecisionError(f"layer {node.target!r} has no input quantizer: its input bits cannot be chosen")
            slots.append((str(node.target), node.name, inp))
    if not slots:
        raise MixedPrecisionError("the model has no conv or linear layer to choose bits for")

    domains: dict[str, set[int]] = {}
    knob_names: list[str] = []
    a_index: dict[int, str] = {}
    for name, _, inp in slots:
        knob_names.append(f"w:{name}")
        an = f"a:{owner.get(id(inp), name + '.input')}"
        a_index[id(inp)] = an
        if an not in knob_names:
            knob_names.append(an)
    for n in knob_names:
        domains[n] = set(cands)

    pinned: dict[str, int] = {}

    def pin(knob: str, bits: int, why: str) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise MixedPrecisionError(f"{why}: bits must be integers in 2..16, got {bits!r}")
        if pinned.setdefault(knob, bits) != bits:
            raise MixedPrecisionError(f"{why}: {knob} is pinned to both {pinned[knob]} and {bits} bits")
        domains[knob] = {bits}

    by_name = {name: (name, inp) for name, _, inp in slots}
    if first_last_bits is not None:
        first, last = slots[0], slots[-1]
        pin(f"w:{first[0]}", first_last_bits, "first_last_bits")
        pin(a_index[id(first[2])], first_last_bits, "first_last_bits")
        pin(f"w:{last[0]}", first_last_bits, "first_last_bits")
    for lname, bits in (pins or {}).items():
        if lname not in by_name:
            raise MixedPrecisionError(f"pins names {lname!r}, not a layer; layers: {', '.join(by_name)}")
        w, a = bits
        pin(f"w:{lname}", w, f"pin of {lname!r}")
        pin(a_index[id(by_name[lname][1])], a, f"pin of {lname!r}")

    index = {n: i for i, n in enumerate(knob_names)}
    knobs = tuple(Knob(n, n[0], tuple(sorted(domains[n]))) for n in knob_names)
    layers = tuple(LayerSlot(name, op, index[f"w:{name}"], index[a_index[id(inp)]]) for name, op, inp in slots)
    a_of_fq = {id(inp): index[a_index[id(inp)]] for _, _, inp in slots}
    value_knobs = {v: a_of_fq[id(fq)] for v, fq in quantizer_of.items() if fq is not None and id(fq) in a_of_fq}
    return DecisionSpace(cands, layers, knobs, value_knobs)


def layer_choices(space: DecisionSpace, layer: LayerSlot) -> list[tuple[int, int]]:
    """The ``(w_bits, a_bits)`` a layer can take."""
    return list(itertools.product(space.knobs[layer.w_knob].domain, space.knobs[layer.a_knob].domain))


def compute_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
