"""Per-layer sensitivity: how much each layer suffers at each ``(w_bits, a_bits)``.

Methods register by name (:mod:`.registry`); each maps a :class:`SensitivityInput` to
a :data:`SensitivityTable` ``{layer: {(w_bits, a_bits): score}}`` (lower is better,
additive over layers: the search minimises the sum), plus one entry per activation
quantizer that feeds no layer, under its ``layer_bits`` key: ``{(0, a_bits): score}``. :func:`layer_sensitivity` runs
one and caches its table per FP32 model (:mod:`.sens_cache`).

Built in: ``noise`` (:mod:`.noise`), ``hessian`` (:mod:`.hessian`), ``measured`` and ``measured_loss``
(:mod:`.measured`).
"""

from __future__ import annotations

import math

from . import hessian, measured, noise  # noqa: F401  (the built-in methods register themselves)
from .errors import MixedPrecisionError
from .registry import DEFAULT_OPTIONS, get_method, names, register
from .sens_cache import cache_key, read_table, write_table
from .sens_types import SensitivityData, SensitivityInput, SensitivityTable
from .space import DecisionSpace, act_choices, layer_choices

__all__ = ["SensitivityData", "SensitivityInput", "SensitivityTable", "check_table", "layer_sensitivity", "methods", "register"]


def methods() -> tuple[str, ...]:
    return names()


def layer_sensitivity(method: str, inp: SensitivityInput, use_cache: bool = True) -> SensitivityTable:
    """The table of ``method`` for ``inp``, from the cache when computed before."""
    fn = get_method(method)
    unknown = sorted(set(inp.options) - set(DEFAULT_OPTIONS[method]))
    if unknown:
        raise MixedPrecisionError(
            f"sensitivity method {method!r} has no option(s) {', '.join(unknown)}; options: {', '.join(DEFAULT_OPTIONS[method]) or 'none'}"
        )
    options = {**DEFAULT_OPTIONS[method], **inp.options}
    key = cache_key(method, inp, options)
    if use_cache:
        hit = read_table(key)
        if hit is not None:
            return hit
    table = fn(SensitivityInput(**{**inp.__dict__, "options": options}))
    check_table(table, inp.space)
    if use_cache:
        write_table(key, table, method)
    return table


def check_table(table: SensitivityTable, space: DecisionSpace) -> None:
    entries = [("layer", s.name, layer_choices(space, s)) for s in space.layers]
    entries += [("quantizer", a.key, act_choices(space, a)) for a in space.acts]  # those feeding no layer
    for what, key, choices in entries:
        row = table.get(key)
        if row is None:
            raise MixedPrecisionError(f"sensitivity table lacks {what} {key!r}")
        for c in choices:
            v = row.get(c)
            if v is None or not math.isfinite(v):
                raise MixedPrecisionError(f"sensitivity of {what} {key!r} at {c} is missing or not finite: {v!r}")
