"""The sensitivity methods by name: :func:`register` adds one, with its options' defaults."""

from __future__ import annotations

from typing import Any, Callable

from .errors import MixedPrecisionError
from .sens_types import SensitivityInput, SensitivityTable

Method = Callable[[SensitivityInput], SensitivityTable]
_METHODS: dict[str, Method] = {}
# Method options and their defaults (they enter the cache key).
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {}
# A method's version enters the cache key too: a change to what it computes bumps it,
# so tables cached by the old code are never read back.
VERSIONS: dict[str, int] = {}


def register(name: str, version: int = 1, **defaults: Any) -> Callable[[Method], Method]:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise MixedPrecisionError(f"sensitivity method {name!r}: version must be a positive integer, got {version!r}")

    def deco(fn: Method) -> Method:
        _METHODS[name] = fn
        DEFAULT_OPTIONS[name] = dict(defaults)
        VERSIONS[name] = version
        return fn

    return deco


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise MixedPrecisionError(f"unknown sensitivity method {name!r}; expected one of {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def names() -> tuple[str, ...]:
    return tuple(sorted(_METHODS))
