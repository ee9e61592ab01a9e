"""The decision space: which bit widths a QAT model's quantizers can take, as knobs.

A layer's choice is ``(w_bits, a_bits)``: its weight bits and the bits of the
activation quantizer feeding it (what its MACs multiply). One activation quantizer may
feed several layers (a residual stream read by a conv and an add, a tensor read by two
branches), so the search's variables are *knobs*: one per weight quantizer and one per
activation quantizer of the model. Layers sharing a quantizer share its knob. The
quantizers that feed no layer (a squeeze-excitation product, a residual sum, a pooled
value, the logits) are knobs too: a uniform network quantizes them at its bits, so a
space without them could not reach it. Every op's cost depends on the knobs of the
values it reads and writes (:mod:`.costs`).

``TrainConfig.layer_bits`` spells an assignment: a layer's name -> ``[w_bits, a_bits]``,
and a quantizer that feeds no layer -> ``[a_bits]`` under :func:`quantizer_key`.
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
class ActSlot:
    """An activation quantizer that feeds no conv/linear: its own ``layer_bits`` entry."""

    key: str  # its layer_bits key (quantizer_key of its owner)
    knob: int


@dataclass(frozen=True)
class DecisionSpace:
    candidates: tuple[int, ...]
    layers: tuple[LayerSlot, ...]
    knobs: tuple[Knob, ...]
    value_knobs: Mapping[str, int] = field(default_factory=dict)  # fx value name -> a-knob of its quantizer
    acts: tuple[ActSlot, ...] = ()
    act_candidates: tuple[int, ...] = ()  # the activation knobs' candidates where they differ from the weights'

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
        out = {s.name: [int(assignment[s.w_knob]), int(assignment[s.a_knob])] for s in self.layers}
        out.update({a.key: [int(assignment[a.knob])] for a in self.acts})
        return out

    def assignment(self, layer_bits: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
        """The inverse of :meth:`layer_bits`: every layer and quantizer must be named,
        consistently, and nothing else."""
        vals: dict[int, int] = {}

        def put(k: int, v: int) -> None:
            if vals.setdefault(k, v) != v:
                raise MixedPrecisionError(f"layer_bits gives {self.knobs[k].name} both {vals[k]} and {v} bits")

        names = {s.name for s in self.layers} | {a.key for a in self.acts}
        unknown = sorted(set(layer_bits) - names)
        if unknown:
            raise MixedPrecisionError(f"layer_bits names {unknown[0]!r}, neither a layer nor a quantizer of the space")
        for s in self.layers:
            if s.name not in layer_bits:
                raise MixedPrecisionError(f"layer_bits does not name layer {s.name!r}")
            bits = list(layer_bits[s.name])
            if len(bits) != 2:
                raise MixedPrecisionError(f"layer_bits: layer {s.name!r} needs [w_bits, a_bits], got {bits!r}")
            put(s.w_knob, int(bits[0]))
            put(s.a_knob, int(bits[1]))
        for a in self.acts:
            if a.key not in layer_bits:
                raise MixedPrecisionError(f"layer_bits does not name quantizer {a.key!r}")
            bits = list(layer_bits[a.key])
            if len(bits) != 1:
                raise MixedPrecisionError(f"layer_bits: quantizer {a.key!r} feeds no layer and takes [a_bits], got {bits!r}")
            put(a.knob, int(bits[0]))
        return tuple(vals[k] for k in range(len(self.knobs)))

    def size(self) -> int:
        return int(_prod(len(k.domain) for k in self.knobs))


def _prod(xs: object) -> int:
    out = 1
    for x in xs:  # type: ignore[attr-defined]
        out *= x
    return out


def check_candidates(candidates: Sequence[int], what: str = "candidates") -> tuple[int, ...]:
    c = tuple(candidates)
    if not c or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8 for b in c) or len(set(c)) != len(c):
        raise MixedPrecisionError(f"{what} must be distinct bit widths in 2..8, got {list(candidates)!r}")
    return tuple(sorted(c))


def quantizer_key(owner: str, module: nn.Module) -> str:
    """The ``layer_bits`` key of the output quantizer of module ``owner``: its name, or
    for a conv/linear (whose name keys its ``[w_bits, a_bits]``) ``<name>.act_fq``."""
    return f"{owner}.act_fq" if isinstance(module, (QuantConv2d, QuantLinear)) else owner


def activation_quantizers(model: nn.Module) -> dict[str, FakeQuant]:
    """Every activation (output) quantizer of a prepared model by its ``layer_bits``
    key, in module order; a quantizer two modules share is listed once."""
    out: dict[str, FakeQuant] = {}
    seen: set[int] = set()
    for name, m in model.named_modules():
        fq = getattr(m, "act_fq", None)
        if isinstance(fq, FakeQuant) and id(fq) not in seen:
            seen.add(id(fq))
            out[quantizer_key(name, m)] = fq
    return out


def decision_space(
    qat_model: fx.GraphModule,
    candidates: Sequence[int] = (2, 4, 8),
    *,
    first_last_bits: int | None = None,
    pins: Mapping[str, Sequence[int]] | None = None,
    act_candidates: Sequence[int] | None = None,
) -> DecisionSpace:
    """The knobs of a model prepared by ``prepare_qat``.

    ``candidates``: the bit widths every knob may take; ``act_candidates``, if given,
    those of the activation knobs instead (e.g. ``[4, 8]``: weights down to 2 bits,
    activations no lower than 4; ``[8]``: weight-only mixed precision).

    ``first_last_bits`` pins what ``prepare_qat``'s rule pins: the first layer's weights
    and input, the last layer's weights and its output (the logits). ``pins`` fixes a
    layer to ``[w_bits, a_bits]`` or a quantizer that feeds no layer to ``[a_bits]``.
    """
    cands = check_candidates(candidates)
    acands = cands if act_candidates is None else check_candidates(act_candidates, "act_candidates")
    modules = dict(qat_model.named_modules())
    owner: dict[int, str] = {}
    for name, m in modules.items():
        fq = getattr(m, "act_fq", None)
        if isinstance(fq, FakeQuant):
            owner.setdefault(id(fq), name)
    quantizer_of: dict[str, FakeQuant | None] = {}
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

    knob_names: list[str] = []
    a_index: dict[int, str] = {}  # id(quantizer) -> its knob's name
    for name, _, inp in slots:
        knob_names.append(f"w:{name}")
        an = f"a:{owner.get(id(inp), name + '.input')}"
        a_index[id(inp)] = an
        if an not in knob_names:
            knob_names.append(an)
    act_keys: dict[str, str] = {}  # knob name -> layer_bits key, quantizers feeding no layer
    for key, fq in activation_quantizers(qat_model).items():
        if id(fq) not in a_index:
            an = f"a:{owner[id(fq)]}"
            a_index[id(fq)] = an
            knob_names.append(an)
            act_keys[an] = key
    domains: dict[str, set[int]] = {n: set(cands if n.startswith("w:") else acands) for n in knob_names}

    pinned: dict[str, int] = {}

    def pin(knob: str, bits: int, why: str) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise MixedPrecisionError(f"{why}: bits must be integers in 2..16, got {bits!r}")
        if pinned.setdefault(knob, bits) != bits:
            raise MixedPrecisionError(f"{why}: {knob} is pinned to both {pinned[knob]} and {bits} bits")
        domains[knob] = {bits}

    by_name = {name: inp for name, _, inp in slots}
    by_key = {key: an for an, key in act_keys.items()}
    if first_last_bits is not None:
        first, last = slots[0], slots[-1]
        pin(f"w:{first[0]}", first_last_bits, "first_last_bits")
        pin(a_index[id(first[2])], first_last_bits, "first_last_bits")
        pin(f"w:{last[0]}", first_last_bits, "first_last_bits")
        logits = getattr(modules[last[0]], "act_fq", None)
        if isinstance(logits, FakeQuant) and id(logits) in a_index:
            pin(a_index[id(logits)], first_last_bits, "first_last_bits")
    for lname, bits in (pins or {}).items():
        bits = list(bits)
        if lname in by_name:
            if len(bits) != 2:
                raise MixedPrecisionError(f"pin of layer {lname!r} needs [w_bits, a_bits], got {bits!r}")
            pin(f"w:{lname}", bits[0], f"pin of {lname!r}")
            pin(a_index[id(by_name[lname])], bits[1], f"pin of {lname!r}")
        elif lname in by_key:
            if len(bits) != 1:
                raise MixedPrecisionError(f"pin of quantizer {lname!r} (it feeds no layer) needs [a_bits], got {bits!r}")
            pin(by_key[lname], bits[0], f"pin of {lname!r}")
        else:
            raise MixedPrecisionError(
                f"pins names {lname!r}, neither a layer nor a quantizer feeding none; layers: {', '.join(by_name)}; "
                f"quantizers: {', '.join(by_key) or 'none'}"
            )

    index = {n: i for i, n in enumerate(knob_names)}
    knobs = tuple(Knob(n, n[0], tuple(sorted(domains[n]))) for n in knob_names)
    layers = tuple(LayerSlot(name, op, index[f"w:{name}"], index[a_index[id(inp)]]) for name, op, inp in slots)
    acts = tuple(ActSlot(key, index[an]) for an, key in act_keys.items())
    value_knobs = {v: index[a_index[id(fq)]] for v, fq in quantizer_of.items() if fq is not None and id(fq) in a_index}
    return DecisionSpace(cands, layers, knobs, value_knobs, acts, () if acands == cands else acands)


def layer_choices(space: DecisionSpace, layer: LayerSlot) -> list[tuple[int, int]]:
    """The ``(w_bits, a_bits)`` a layer can take."""
    return list(itertools.product(space.knobs[layer.w_knob].domain, space.knobs[layer.a_knob].domain))


def act_choices(space: DecisionSpace, act: ActSlot) -> list[tuple[int, int]]:
    """The sensitivity-table keys of a quantizer that feeds no layer: ``(0, a_bits)``
    (no weights of its own)."""
    return [(0, b) for b in space.knobs[act.knob].domain]


def compute_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
