"""QuantSpec: the one description of a quantizer that every layer above reads.

A spec is validated when it is built, so a bad field fails where it was written,
with its name in the message, not deep inside a kernel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

GRANULARITIES = ("tensor", "channel", "group", "element")
ESTIMATORS = ("minmax", "ema", "meanstd", "percentile", "mse", "entropy")
SCALE_RULES = ("standard", "halfrange")
MIN_BITS, MAX_BITS = 2, 16


def parse_granularity(text: str) -> tuple[str, int | None]:
    """``"group:32"`` -> ``("group", 32)``; ``"channel"`` -> ``("channel", None)``."""
    if not isinstance(text, str):
        raise TypeError(f"granularity must be a string, got {type(text).__name__}")
    kind, sep, arg = text.partition(":")
    if kind not in GRANULARITIES:
        raise ValueError(f"granularity {text!r} is unknown; expected one of tensor, channel, group:G, element")
    if kind == "group":
        if not sep or not arg.strip().isdigit() or int(arg) < 1:
            raise ValueError(f"granularity {text!r}: group size must be a positive integer, as in 'group:32'")
        return kind, int(arg)
    if sep:
        raise ValueError(f"granularity {text!r}: only 'group' takes an argument")
    return kind, None


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one tensor.

    bits:          2..16.
    symmetric:     zero point fixed at 0 (True) or fitted to the range (False).
    signed:        integer range signed (``[-2^(b-1), 2^(b-1)-1]``) or unsigned
                   (``[0, 2^b-1]``). ``None`` picks signed for symmetric specs and
                   unsigned for asymmetric ones (torch's qint8 / quint8 habit).
    narrow_range:  signed only: ``qmin = -qmax`` so the grid is symmetric about 0.
    granularity:   ``tensor`` | ``channel`` | ``group:G`` | ``element``.
    axis:          the channel axis (``channel`` and ``group``; groups are blocks of G
                   consecutive elements of each channel's slice, in row-major order).
    estimator:     how the range is found: ``minmax`` | ``ema`` | ``meanstd`` |
                   ``percentile`` | ``mse`` | ``entropy``.
    scale_rule:    ``standard`` or ``halfrange`` (the source text's erratum, which maps
                   ``[-r, r]`` onto half the code range and wastes one bit).
    alpha:         ``meanstd``: range is ``mean ± alpha·std``.
    percentile:    ``percentile``: the upper percentile kept (the lower is ``100 - p``).
    ema_decay:     ``ema``: weight of the previous range in the moving average.
    mse_grid:      ``mse``: number of candidate clip ranges searched.
    entropy_bins:  ``entropy``: histogram bins (raised to 2x the level count if fewer).
    """

    bits: int = 8
    symmetric: bool = True
    signed: bool | None = None
    narrow_range: bool = False
    granularity: str = "tensor"
    axis: int = 0
    estimator: str = "minmax"
    scale_rule: str = "standard"
    alpha: float = 3.0
    percentile: float = 99.99
    ema_decay: float = 0.9
    mse_grid: int = 100
    entropy_bins: int = 2048
    _kind: str = field(init=False, repr=False, compare=False)
    _group: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int("bits", self.bits)
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        for name in ("symmetric", "narrow_range"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.signed is not None and not isinstance(self.signed, bool):
            raise TypeError(f"signed must be a bool or None, got {self.signed!r}")
        kind, group = parse_granularity(self.granularity)
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_group", group)
        _check_int("axis", self.axis)
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator {self.estimator!r} is unknown; expected one of {', '.join(ESTIMATORS)}")
        if self.scale_rule not in SCALE_RULES:
            raise ValueError(f"scale_rule {self.scale_rule!r} is unknown; expected one of {', '.join(SCALE_RULES)}")
        if self.narrow_range and not self.is_signed:
            raise ValueError("narrow_range applies to signed ranges only (signed=False here)")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"alpha must be a positive number, got {self.alpha!r}")
        if not (isinstance(self.percentile, (int, float)) and 50 < self.percentile <= 100):
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        _check_int("mse_grid", self.mse_grid)
        if self.mse_grid < 2:
            raise ValueError(f"mse_grid must be at least 2, got {self.mse_grid}")
        _check_int("entropy_bins", self.entropy_bins)
        if self.entropy_bins < 16:
            raise ValueError(f"entropy_bins must be at least 16, got {self.entropy_bins}")

    # Derived facts, computed not stored, so replace() keeps them right.
    @property
    def is_signed(self) -> bool:
        return self.symmetric if self.signed is None else self.signed

    @property
    def qmin(self) -> int:
        if not self.is_signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.is_signed else 2**self.bits - 1

    @property
    def granularity_kind(self) -> str:
        return self._kind

    @property
    def group_size(self) -> int | None:
        return self._group

    def with_(self, **changes: Any) -> "QuantSpec":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_kind"), d.pop("_group")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantSpec":
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown QuantSpec field(s): {', '.join(sorted(unknown))}")
        return cls(**d)


def _check_int(name: str, value: object) -> None:
    # bool is an int subclass; True bits is a typo, not a width.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
