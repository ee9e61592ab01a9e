"""TrainConfig: one trial's complete description, and the one place its fields are defined.

Each field declares, beside its default (dataclass field metadata):

- ``kind``: what type it holds (``int``, ``int?``, ``float``, ``str``, ``mapping``,
  ``model``, ``dataset``, ``layer_bits``) — a value of another type is a :class:`FieldTypeError`;
- ``check``: its range or allowed values — a value outside is a :class:`ConfigError`;
- ``stage``: what depends on it. ``fp32``: FP32 pretraining (so ``fp32_key``);
  ``quant``: only the quantized model (an fp32 trial ignores it: ``FP32_IGNORED``);
  ``trial``: the trial's result but not its pretraining (``method``, ``limit_test``);
  ``none``: only where or how fast it runs (``device``, ``num_workers``), so not the id;
- ``omit_default``: the field came after trial ids were first published, so the id
  hash leaves it out while it holds its default — every earlier id stays the same.

A sweep spec (``workbook.spec``) validates its values through :func:`normalize_field`
and :func:`check_field` and hashes ids with :func:`config_digest`, so a spec and a
``TrainConfig`` cannot disagree about a field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping

from qatlab.nn.ste import STE_KINDS
from qatlab.quant.spec import ESTIMATORS, MAX_BITS, MIN_BITS, parse_granularity
from qatlab.sources import BUILTIN_DATASETS, dataset_kind, is_import_path, model_kind

METHODS = ("fp32", "ptq", "qat")
STAGES = ("fp32", "quant", "trial", "none")

__all__ = [
    "BUILTIN_DATASETS", "DEFAULTS", "FIELDS", "FP32_FIELDS", "FP32_IGNORED", "METHODS", "PROFILES", "STAGES",
    "ConfigError", "FieldTypeError", "TrainConfig", "as_float", "as_int", "check_field", "config_digest",
    "dataset_kind", "field_kind", "fields_of", "is_import_path", "model_kind", "normalize_field", "profile",
]  # fmt: skip


class ConfigError(ValueError):
    """A config field with an impossible value; ``field`` names it, the message too."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(self._format(field, problem))

    def __reduce__(self) -> tuple[Any, ...]:
        # args hold the formatted message; rebuild from the parts (exceptions cross
        # process boundaries: Ray workers, DataLoader workers)
        return (type(self), (self.field, self.problem))

    @staticmethod
    def _format(field: str, problem: str) -> str:
        return f"{field} {problem}"


class FieldTypeError(ConfigError):
    """A value of the wrong kind for its field: a wrong type, or a model/dataset string
    that names nothing (a spec refuses these outright, not per trial)."""

    @staticmethod
    def _format(field: str, problem: str) -> str:
        return f"{field}: {problem}"


# ---- kinds: type checks and normalisation ----------------------------------------------


def as_int(name: str, value: Any, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldTypeError(name, f"expected an integer{' or null' if nullable else ''}, got {value!r}")
    return int(value)


def as_float(name: str, value: Any) -> float:
    """A finite float. Ints become floats so ``lr: 1`` and ``lr: 1.0`` give one trial id;
    numeric strings are read because YAML 1.1 (PyYAML) reads ``1e-3`` as a string."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FieldTypeError(name, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldTypeError(name, f"expected a finite number, got {value!r}")
    return float(value)


def _as_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise FieldTypeError(name, f"expected a string, got {value!r}")
    return value


def _as_mapping(name: str, value: Any) -> dict[str, Any]:
    """A JSON-able mapping, canonicalised through JSON: tuples become lists, so that
    the id hash and the saved checkpoint see exactly what a spec file would give."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FieldTypeError(name, f"expected a mapping of keyword arguments, got {value!r}")
    for k in value:
        if not isinstance(k, str) or not k.isidentifier():
            raise FieldTypeError(name, f"keys must be Python identifiers, got {k!r}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise FieldTypeError(name, f"values must be plain JSON (numbers, strings, lists, mappings): {e}") from None


def _as_model(name: str, value: Any) -> str:
    from qatlab.models import MODELS

    v = _as_str(name, value)
    if model_kind(v) == "unknown":
        raise FieldTypeError(name, f"unknown model {v!r}; expected one of {', '.join(MODELS)} or an import path package.module:factory")
    return v


def _as_dataset(name: str, value: Any) -> str:
    v = _as_str(name, value)
    if dataset_kind(v) == "unknown":
        raise FieldTypeError(
            name,
            f"unknown dataset {v!r}; expected one of {', '.join(BUILTIN_DATASETS)}, an import path "
            "package.module:loader, a .npz file or an image folder (a path with a '/')",
        )
    return v


def _as_layer_bits(name: str, value: Any) -> dict[str, list[int]]:
    """Per-layer bits: conv/linear module name -> [w_bits, a_bits], or an activation
    quantizer's owner -> [a_bits]; canonical (sorted, lists) so a spec, a config and a
    checkpoint hash alike. Which form a name takes is the model's to say (prepare_qat)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FieldTypeError(name, f"expected a mapping of module name -> [w_bits, a_bits] or [a_bits], got {value!r}")
    bad = [k for k in value if not isinstance(k, str) or not k]
    if bad:
        raise FieldTypeError(name, f"keys must be module names (non-empty strings), got {bad[0]!r}")
    out: dict[str, list[int]] = {}
    for k in sorted(value):
        v = value[k]
        if not isinstance(v, (list, tuple)) or len(v) not in (1, 2):
            raise FieldTypeError(
                name, f"{k!r} must map to [w_bits, a_bits] (a conv/linear) or [a_bits] (an activation quantizer), got {v!r}"
            )
        out[k] = [int(as_int(name, b)) for b in v]  # type: ignore[arg-type]
    return out


_KINDS: dict[str, Callable[[str, Any], Any]] = {
    "int": as_int,
    "int?": lambda n, v: as_int(n, v, nullable=True),
    "float": as_float,
    "str": _as_str,
    "mapping": _as_mapping,
    "model": _as_model,
    "dataset": _as_dataset,
    "layer_bits": _as_layer_bits,
}


# ---- range checks ----------------------------------------------------------------------


# Upper bounds: far beyond any real run, and below what would overflow a C integer
# (torch's seed, a DataLoader's sizes) or hang a trial for years without a word.
MAX_SEED = 2**63 - 1
MAX_EPOCHS = 100_000
MAX_COUNT = 2**31 - 1  # batch sizes, sample limits, calibration batches
MAX_WORKERS = 1024


def _in_range(lo: int, hi: int) -> Callable[[str, Any], None]:
    def check(name: str, v: Any) -> None:
        if v is not None and not lo <= v <= hi:
            raise ConfigError(name, f"must be in {lo}..{hi}, got {v}")

    return check


def _positive_or_null(name: str, v: int | None) -> None:
    if v is not None and not 1 <= v <= MAX_COUNT:
        raise ConfigError(name, f"must be a positive integer up to {MAX_COUNT} or null, got {v}")


def _bits(nullable: bool) -> Callable[[str, Any], None]:
    def check(name: str, v: int | None) -> None:
        if v is not None and not MIN_BITS <= v <= MAX_BITS:
            raise ConfigError(name, f"must be in {MIN_BITS}..{MAX_BITS}{' or null' if nullable else ''}, got {v}")

    return check


def _layer_bits(name: str, v: dict[str, list[int]]) -> None:
    for k, bits in v.items():
        if k.endswith(".act_fq") and len(bits) != 1:
            raise ConfigError(name, f"{k!r} names a layer's output quantizer and takes [a_bits], got {bits}")
        if not all(MIN_BITS <= b <= MAX_BITS for b in bits):
            raise ConfigError(name, f"{k!r}: bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")


def _positive(name: str, v: float) -> None:
    if not v > 0:
        raise ConfigError(name, f"must be > 0, got {v}")


def _one_of(allowed: tuple[str, ...]) -> Callable[[str, Any], None]:
    def check(name: str, v: str) -> None:
        if v not in allowed:
            raise ConfigError(name, f"{v!r} is unknown; expected one of {', '.join(allowed)}")

    return check


def _granularity(name: str, v: str) -> None:
    try:
        parse_granularity(v)
    except ValueError as e:
        raise ConfigError(name, f"is invalid: {e}") from None


def _open_fraction(name: str, v: float) -> None:
    if not 0 < v < 1:
        raise ConfigError(name, f"must be in (0, 1), got {v}")


def _closed_fraction(name: str, v: float) -> None:
    if not 0 <= v <= 1:
        raise ConfigError(name, f"must be in [0, 1], got {v}")


def _device(name: str, v: str) -> None:
    if not (v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v)):
        raise ConfigError(name, f"must be auto, cpu, cuda or cuda:N, got {v!r}")


def _f(default: Any, kind: str, stage: str, check: Callable[[str, Any], None] | None = None, *, omit_default: bool = False) -> Any:
    assert kind in _KINDS and stage in STAGES
    meta = {"kind": kind, "stage": stage, "check": check, "omit_default": omit_default}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    # What is trained, on what: a zoo name or package.module:factory; a built-in dataset,
    # package.module:loader, a .npz file or an image folder (see qatlab.datasets).
    model: str = _f("lenet", "model", "fp32")
    dataset: str = _f("fashion-mnist", "dataset", "fp32")
    method: str = _f("qat", "str", "trial", _one_of(METHODS))  # fp32 | ptq | qat
    w_bits: int = _f(8, "int", "quant", _bits(False))
    a_bits: int = _f(8, "int", "quant", _bits(False))
    granularity: str = _f("channel", "str", "quant", _granularity)  # of the weights; activations are per tensor
    estimator: str = _f("minmax", "str", "quant", _one_of(ESTIMATORS))
    ste: str = _f("lsq", "str", "quant", _one_of(STE_KINDS))  # identity | clipped | lsq | pact
    seed: int = _f(0, "int", "fp32", _in_range(0, MAX_SEED))
    epochs: int = _f(2, "int", "fp32", _in_range(0, MAX_EPOCHS))  # FP32 pretraining epochs
    qat_epochs: int = _f(1, "int", "quant", _in_range(0, MAX_EPOCHS))
    batch_size: int = _f(128, "int", "fp32", _in_range(1, MAX_COUNT))
    lr: float = _f(1e-3, "float", "fp32", _positive)
    qat_lr: float = _f(1e-4, "float", "quant", _positive)
    limit_train: int | None = _f(None, "int?", "fp32", _positive_or_null)
    limit_test: int | None = _f(None, "int?", "trial", _positive_or_null)
    val_fraction: float = _f(0.1, "float", "fp32", _open_fraction)
    calib_batches: int = _f(16, "int", "quant", _in_range(0, MAX_COUNT))
    first_last_bits: int | None = _f(None, "int?", "quant", _bits(True))
    # Mixed precision: module name -> [w_bits, a_bits] (a_bits: the bits of the layer's
    # input activation), applied after w_bits/a_bits/first_last_bits (nn.prepare_qat).
    layer_bits: dict[str, list[int]] = _f({}, "layer_bits", "quant", _layer_bits, omit_default=True)
    freeze_fraction: float = _f(0.6, "float", "quant", _closed_fraction)  # of QAT steps; then BN statistics and observers freeze
    rounding: str = _f("float", "str", "quant", _one_of(("float", "fixed")))  # IntModel requantization
    device: str = _f("auto", "str", "none", _device)  # auto | cpu | cuda | cuda:N
    # Keyword arguments of an import-path model factory (after the data-derived ones).
    model_args: dict[str, Any] = _f({}, "mapping", "fp32", omit_default=True)
    # Options of the dataset: an import-path loader's keyword arguments, or an image
    # folder's size / channels / test_fraction (qatlab.datasets.imagefolder).
    loader_args: dict[str, Any] = _f({}, "mapping", "fp32", omit_default=True)
    num_workers: int = _f(0, "int", "none", _in_range(0, MAX_WORKERS))  # DataLoader worker processes

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, check_field(f.name, getattr(self, f.name)))
        if self.model_args and model_kind(self.model) != "import":
            raise ConfigError("model_args", f"apply to an import-path model only, not the zoo's {self.model!r}")
        kind = dataset_kind(self.dataset)
        if self.loader_args and kind in ("builtin", "npz"):
            raise ConfigError(
                "loader_args", f"do not apply to a {'built-in dataset' if kind == 'builtin' else '.npz file'} ({self.dataset!r})"
            )
        if kind == "folder":
            from qatlab.datasets.imagefolder import check_options

            try:
                check_options(self.loader_args)
            except ValueError as e:
                raise ConfigError("loader_args", f"are invalid for an image folder: {e}") from None

    # frozen with dict fields: the generated hash would fail, the trial id is the identity
    def __hash__(self) -> int:
        return hash(self.trial_id)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError("config", f"has unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self, keys: tuple[str, ...] | None = None) -> str:
        d = self.to_dict()
        if keys is not None:
            d = {k: d[k] for k in keys}
        return _hash(d)

    @property
    def trial_id(self) -> str:
        return config_digest(self.to_dict())

    @property
    def fp32_key(self) -> str:
        """Everything FP32 pretraining depends on: sweeps over bits/methods share it."""
        return config_digest(self.to_dict(), stages=("fp32",))


def _hash(d: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(TrainConfig)}
DEFAULTS: dict[str, Any] = {
    n: f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    for n, f in FIELDS.items()
}


def fields_of(*stages: str) -> tuple[str, ...]:
    """The fields of the given stages, in declaration order."""
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"stages: unknown {bad}; expected some of {', '.join(STAGES)}")
    return tuple(n for n, f in FIELDS.items() if f.metadata["stage"] in stages)


FP32_FIELDS = fields_of("fp32")
# What an fp32 trial does not depend on: the complement of FP32_FIELDS among the fields
# that change a trial's result, less those that still matter to an fp32 trial.
FP32_IGNORED = fields_of("quant")


def field_kind(name: str) -> str:
    if name not in FIELDS:
        raise ConfigError(name, f"is not a config key; valid keys: {', '.join(sorted(FIELDS))}")
    return FIELDS[name].metadata["kind"]


def normalize_field(name: str, value: Any) -> Any:
    """``value`` type-checked and normalised for field ``name``; :class:`FieldTypeError` if of the wrong kind."""
    return _KINDS[field_kind(name)](name, value)


def check_field(name: str, value: Any) -> Any:
    """:func:`normalize_field`, then the field's range / allowed values (:class:`ConfigError`)."""
    v = normalize_field(name, value)
    check = FIELDS[name].metadata["check"]
    if check is not None:
        check(name, v)
    return v


def config_digest(config: Mapping[str, Any], stages: tuple[str, ...] = ("fp32", "quant", "trial")) -> str:
    """The trial id (or, with ``stages=("fp32",)``, the FP32 key) of a config mapping.

    Works on a mapping that is not a valid config (a spec's impossible trial gets an id
    in the same space, the one it would have once fixed). Fields marked ``omit_default``
    are hashed only when they differ from their default.
    """
    keep = set(fields_of(*stages))
    d = {
        k: v for k, v in config.items()
        if k in keep and not (FIELDS[k].metadata["omit_default"] and v == DEFAULTS[k])
    }  # fmt: skip
    return _hash(d)


PROFILES: dict[str, dict[str, Any]] = {
    # CPU, 2 cores: an FP32 + PTQ + QAT trio of the default CNN in a few minutes.
    "quick": {"model": "lenet", "dataset": "fashion-mnist", "epochs": 2, "qat_epochs": 1, "limit_train": 12000, "batch_size": 128},
    # The real experiment (GPU-sized; runs on a CPU too, slowly).
    "full": {"model": "lenet", "dataset": "fashion-mnist", "epochs": 6, "qat_epochs": 2, "limit_train": None, "batch_size": 128},
    # Seconds: for tests and smoke runs.
    "tiny": {"model": "lenet", "dataset": "digits", "epochs": 3, "qat_epochs": 1, "batch_size": 64, "calib_batches": 4},
}


def profile(name: str, **overrides: Any) -> TrainConfig:
    if name not in PROFILES:
        raise ConfigError("profile", f"{name!r} is unknown; expected one of {', '.join(PROFILES)}")
    return TrainConfig.from_dict({**PROFILES[name], **overrides})
