"""TrainConfig: one trial's complete description, validated field by field.

A sweep spec's grid and ``train`` defaults resolve into one of these per trial;
its canonical JSON is hashed into the trial id and the FP32 cache key.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from qatlab.nn.ste import STE_KINDS
from qatlab.quant.spec import ESTIMATORS, MAX_BITS, MIN_BITS, parse_granularity

METHODS = ("fp32", "ptq", "qat")


class ConfigError(ValueError):
    """A config field with a wrong type or an impossible value; names the field."""


@dataclass(frozen=True)
class TrainConfig:
    model: str = "lenet"
    dataset: str = "fashion-mnist"
    method: str = "qat"  # fp32 | ptq | qat
    w_bits: int = 8
    a_bits: int = 8
    granularity: str = "channel"  # of the weights; activations are per tensor
    estimator: str = "minmax"
    ste: str = "lsq"  # identity | clipped | lsq | pact
    seed: int = 0
    epochs: int = 2  # FP32 pretraining epochs
    qat_epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    qat_lr: float = 1e-4
    limit_train: int | None = None
    limit_test: int | None = None
    val_fraction: float = 0.1
    calib_batches: int = 16
    first_last_bits: int | None = None
    freeze_fraction: float = 0.6  # of QAT steps; then BN statistics and observers freeze
    rounding: str = "float"  # IntModel requantization: float | fixed
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            want = f.type if isinstance(f.type, str) else f.type.__name__
            if "int" in want and "None" in want:
                if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                    raise ConfigError(f"{f.name} must be an integer or null, got {v!r}")
            elif want == "int":
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ConfigError(f"{f.name} must be an integer, got {v!r}")
            elif want == "float":
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ConfigError(f"{f.name} must be a number, got {v!r}")
            elif want == "str" and not isinstance(v, str):
                raise ConfigError(f"{f.name} must be a string, got {v!r}")
        _choice("method", self.method, METHODS)
        _choice("estimator", self.estimator, ESTIMATORS)
        _choice("ste", self.ste, STE_KINDS)
        _choice("rounding", self.rounding, ("float", "fixed"))
        for name in ("w_bits", "a_bits"):
            if not MIN_BITS <= getattr(self, name) <= MAX_BITS:
                raise ConfigError(f"{name} must be in {MIN_BITS}..{MAX_BITS}, got {getattr(self, name)}")
        if self.first_last_bits is not None and not MIN_BITS <= self.first_last_bits <= MAX_BITS:
            raise ConfigError(f"first_last_bits must be in {MIN_BITS}..{MAX_BITS} or null, got {self.first_last_bits}")
        try:
            parse_granularity(self.granularity)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for name in ("epochs", "qat_epochs", "calib_batches", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("lr", "qat_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.freeze_fraction <= 1:
            raise ConfigError(f"freeze_fraction must be in [0, 1], got {self.freeze_fraction}")
        for name in ("limit_train", "limit_test"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be a positive integer or null, got {v}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self, keys: tuple[str, ...] | None = None) -> str:
        d = self.to_dict()
        if keys is not None:
            d = {k: d[k] for k in keys}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def trial_id(self) -> str:
        # The device does not change what is computed, so it does not change the id.
        return self.digest(tuple(k for k in self.to_dict() if k != "device"))

    @property
    def fp32_key(self) -> str:
        """Everything FP32 pretraining depends on: sweeps over bits/methods share it."""
        return self.digest(("model", "dataset", "seed", "epochs", "batch_size", "lr", "limit_train", "val_fraction"))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} {value!r} is unknown; expected one of {', '.join(allowed)}")


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
        raise ConfigError(f"profile {name!r} is unknown; expected one of {', '.join(PROFILES)}")
    return TrainConfig.from_dict({**PROFILES[name], **overrides})
