"""Experiment specs: YAML → validated, expanded trials.

A spec describes a sweep once (format in docs/cli.md)::

    name: w-a-bits
    dataset: fashion-mnist
    model: lenet
    train: {epochs: 2, limit_train: 12000}        # defaults for every trial
    grid: {method: [ptq, qat], w_bits: [8, 4]}     # cartesian product
    include: [{method: qat, bits: 2, ste: lsq}]    # extra trials
    resources: {num_cpus: 1, num_gpus: 0.25}

Two kinds of mistakes are told apart:

* Structural ones — unknown keys, wrong types, empty grid lists, unknown model or
  dataset (a model or loader import path that does not import, a data path that does
  not exist), bad resources, YAML syntax — make the whole spec unusable: ``load_spec``
  raises :class:`SpecError` with one line naming ``FILE:LINE:COL`` and the key, before
  anything runs.
* An impossible *value* in one trial (``w_bits: 1``) only spoils that trial: it is
  kept as a :class:`Trial` with ``error`` set (naming the field and where it came
  from), so a sweep can record it ``failed`` and still run the others. When no trial
  at all is valid the spec is an error.

Optional keys beyond the example above (all in docs/cli.md): ``description``; ``bits: B`` as
a shorthand for ``w_bits: B, a_bits: B`` (in ``train``, ``grid`` and ``include``);
list values inside an ``include`` entry expand like a small grid; ``save_models``
(default true); ``resources.memory``, ``resources.custom`` (Ray custom resources),
``resources.max_retries`` (infrastructure retries) and ``resources.timeout_s``;
``mixed`` (per-layer bits under hardware budgets, the ASIC ones on its ``asic`` array:
:class:`MixedSpec`, one :class:`MixedPlan` per base config — a qat trial at W8A8 — whose trials the sweep
adds once planned, ``workbook.sweep.mixed``).

What a trial field may hold, and the trial id, are ``qatlab.config``'s: this module
reads YAML, expands grids and includes, and says where in the file a value came from.

A user's model or data (see ``qatlab.usermodel`` and ``qatlab.datasets``)::

    model: mypkg.nets:small_cnn          # importable here and on every Ray worker
    train: {model_args: {width: 32}}
    dataset: data/shapes.npz             # or data/images/ (one folder per class),
                                         # or mypkg.data:load (returns train, test)

A relative data path is taken from the spec file's folder and stored absolute, so a
Ray worker, whatever its working directory, reads the same files by the same string.

Importing this module is cheap; validation imports qatlab (and thus torch) lazily.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

SPECS_DIR = Path(__file__).resolve().parent / "specs"

TOP_KEYS = ("name", "description", "dataset", "model", "train", "grid", "include", "resources", "save_models", "mixed")
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "custom", "max_retries", "timeout_s")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# A spec is a page of YAML; the cap stops `--spec /dev/zero` from being read whole.
MAX_SPEC_BYTES = 4 * 1024 * 1024
# Grid points plus include combinations a spec may expand to: far above any sweep a
# cluster runs, low enough that a mistyped grid (or YAML aliases multiplying lists)
# is refused in milliseconds instead of building millions of configs.
MAX_TRIALS = 10_000
# YAML values a spec may stand for with its aliases expanded (a real one has hundreds).
MAX_YAML_NODES = 1_000_000


class SpecError(ValueError):
    """An unusable spec. The message is one line: ``FILE[:LINE:COL]: KEY: problem``."""


def __getattr__(name: str) -> Any:
    # fp32 trials do not depend on these (qatlab.config declares them per field): their
    # values are reset to TrainConfig's defaults so that `method: [fp32, qat] × w_bits:
    # [8, 4]` yields one fp32 trial, not two. Lazy, to keep this import free of torch.
    if name == "FP32_IGNORED":
        from qatlab.config import FP32_IGNORED

        return FP32_IGNORED
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Resources:
    """What each trial asks Ray for, and how Ray treats it."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0  # fractional shares a GPU between trials
    memory: int | None = None  # bytes; Ray's logical memory resource
    custom: Mapping[str, float] = field(default_factory=dict)  # e.g. {"trial_slot": 1}
    max_retries: int = 3  # Ray re-runs a trial whose worker or node died this often
    timeout_s: float | None = None  # a trial running longer is cancelled and failed

    def ray_options(self, num_gpus: float | None = None) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus if num_gpus is None else num_gpus,
            "max_retries": self.max_retries,
            # run_trial never raises for a failing trial, so an exception that escapes
            # is a bug in the runner: retrying it would only repeat it.
            "retry_exceptions": False,
        }
        if self.memory is not None:
            opts["memory"] = self.memory
        if self.custom:
            opts["resources"] = dict(self.custom)
        return opts

    def demand(self, num_gpus: float | None = None) -> dict[str, float]:
        """Ray resource names → amount per trial (zero amounts left out)."""
        d = {"CPU": self.num_cpus, "GPU": self.num_gpus if num_gpus is None else num_gpus, **self.custom}
        if self.memory:
            d["memory"] = float(self.memory)
        return {k: float(v) for k, v in d.items() if v}


@dataclass(frozen=True)
class Trial:
    """One resolved trial: every TrainConfig field, its id, and where it came from."""

    trial_id: str
    config: Mapping[str, Any]
    origin: str  # "grid" or "include[i]"
    error: str | None = None  # a ConfigError message (naming the field) if the config is impossible
    label: str = ""

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Spec:
    name: str
    path: Path | None
    description: str
    defaults: Mapping[str, Any]  # TrainConfig defaults ← model/dataset ← train
    grid: Mapping[str, tuple[Any, ...]]
    include: tuple[Mapping[str, Any], ...]
    resources: Resources
    save_models: bool
    trials: tuple[Trial, ...]
    collapsed: int  # grid points/include entries that duplicated an earlier trial
    text: str = ""  # the YAML as read, kept beside the results
    mixed: "MixedSpec | None" = None  # the `mixed:` block: plans whose trials the sweep adds once planned

    @property
    def valid_trials(self) -> tuple[Trial, ...]:
        return tuple(t for t in self.trials if t.valid)

    @property
    def invalid_trials(self) -> tuple[Trial, ...]:
        return tuple(t for t in self.trials if not t.valid)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "<spec>"


# ---- finding and reading spec files -------------------------------------------------


def available_specs() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def resolve_spec_path(name_or_path: str | os.PathLike[str]) -> Path:
    """An existing file as given, else a bundled spec ``workbook/specs/NAME.yaml``."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    s = str(name_or_path)
    if "/" not in s and os.sep not in s:
        bundled = SPECS_DIR / (s if s.endswith((".yaml", ".yml")) else f"{s}.yaml")
        if bundled.is_file():
            return bundled
    if p.exists():
        raise SpecError(f"{p}: not a file")
    raise SpecError(f"{s}: no such spec file (bundled specs: {', '.join(available_specs()) or 'none'})")


def load_spec(name_or_path: str | os.PathLike[str]) -> Spec:
    """Read, validate and expand a spec file (or bundled spec name). Raises SpecError."""
    path = resolve_spec_path(name_or_path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES // (1024 * 1024)} MiB: not a spec file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}): not a spec file") from None
    data = read_yaml(text, str(path))
    return parse_spec(data, path, text, locations=_locations(text))


def read_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in one mapping (SpecError naming both lines).

    Plain PyYAML keeps the last of two equal keys, so a second ``include:`` silently
    replaces the first. A ``<<`` merge may still be overridden: that is its purpose.
    """
    import yaml

    loader = None
    try:
        loader = _unique_key_loader()(text)  # its reader already refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise SpecError(f"{source}: expands to more than {MAX_YAML_NODES} YAML values (each alias repeats what it names): not a spec")
        return loader.construct_document(node)
    except _DuplicateKey as e:
        raise SpecError(
            f"{source}:{e.line}:{e.column}: key {e.key!r} is given twice (first at {source}:{e.first_line}:{e.first_column}): "
            "give each key once"
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise SpecError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: YAML error: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise SpecError(f"{source}: nested too deeply to be a spec") from None
    finally:
        if loader is not None:
            loader.dispose()


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Values ``node`` stands for once every alias is expanded, in O(distinct nodes).

    ``l0: &l0 [1, 1, 1]``, ``l1: &l1 [*l0, *l0, *l0]``, ... nine levels deep is a few
    hundred bytes of YAML that encoding ``model_args`` as JSON would expand to a billion
    values.
    """
    import yaml

    key = id(node)
    if key not in memo:
        memo[key] = 1  # a node that contains itself counts once
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        memo[key] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[key]


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, column: int, first_line: int, first_column: int) -> None:
        super().__init__(key)
        self.key, self.line, self.column, self.first_line, self.first_column = key, line, column, first_line, first_column


_LOADER: Any = None


def _unique_key_loader() -> Any:
    """A SafeLoader whose mappings refuse duplicate keys (built once, on first use: yaml is imported lazily)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, Any] = {}
                # Checked before SafeLoader flattens `<<` merges into the node.
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.setdefault(key, key_node)
                    except TypeError:
                        continue  # an unhashable key: SafeLoader names it below
                    if first is not key_node:
                        a, b = first.start_mark, key_node.start_mark
                        raise _DuplicateKey(key, b.line + 1, b.column + 1, a.line + 1, a.column + 1)
            return super().construct_mapping(node, deep=deep)

    _LOADER = UniqueKeyLoader
    return _LOADER


# ---- validation ---------------------------------------------------------------------


def _locations(text: str) -> dict[str, tuple[int, int]]:
    """Key path (``train.lr``, ``grid.w_bits[1]``, ``include[0].method``) -> (line, column), 1-based."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return {}
    out: dict[str, tuple[int, int]] = {}

    seen: set[int] = set()

    def walk(node: Any, prefix: str) -> None:
        # An aliased node is walked once, under its anchor: the first place it is written.
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    path = f"{prefix}.{k.value}" if prefix else str(k.value)
                    out.setdefault(path, (k.start_mark.line + 1, k.start_mark.column + 1))
                    walk(v, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                path = f"{prefix}[{i}]"
                out.setdefault(path, (item.start_mark.line + 1, item.start_mark.column + 1))
                walk(item, path)

    try:
        walk(root, "")
    except RecursionError:
        return {}
    return out


_PARENT_RE = re.compile(r"^(.*?)(\.[^.\[\]]+|\[\d+\])$")


def _number(kind: str, value: Any, where: str) -> Any:
    """A resources value through qatlab.config's number kinds; SpecError naming ``where``."""
    from qatlab.config import FieldTypeError, as_float, as_int

    try:
        return as_int(where, value) if kind == "int" else as_float(where, value)
    except FieldTypeError as e:
        raise SpecError(f"{where}: {e.problem}") from None


class _Checker:
    def __init__(self, source: str, locations: Mapping[str, tuple[int, int]] | None = None, base_dir: Path | None = None) -> None:
        from qatlab.config import FIELDS

        self.source = source
        self.locations = dict(locations or {})
        self.base_dir = base_dir
        self.fields = tuple(FIELDS)

    def at(self, key: str) -> str:
        """``FILE:LINE:COL`` of ``key`` (or of the nearest enclosing key), else ``FILE``."""
        k = key
        while k:
            if k in self.locations:
                line, col = self.locations[k]
                return f"{self.source}:{line}:{col}"
            m = _PARENT_RE.match(k)
            k = m.group(1) if m else ""
        return self.source

    def err(self, key: str, msg: str) -> SpecError:
        return SpecError(f"{self.at(key)}: {key}: {msg}")

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.err(key, f"expected a mapping, got {type(value).__name__} {value!r}")
        for k in value:
            if not isinstance(k, str):
                raise self.err(key, f"keys must be strings, got {k!r}")
        return dict(value)

    def trial_value(self, key: str, value: Any, where: str) -> Any:
        """One value for trial key ``key`` (``bits`` included), normalised by qatlab.config.

        Values of the wrong kind are errors here; values out of range only spoil their
        trial (found when the trial's TrainConfig is built).
        """
        from qatlab.config import FieldTypeError, as_int, dataset_kind, model_kind, normalize_field

        try:
            v = as_int(key, value) if key == "bits" else normalize_field(key, value)
        except FieldTypeError as e:
            raise self.err(where, e.problem) from None
        if key == "model" and model_kind(v) == "import":
            self.importable(v, "model factory", where)
        elif key == "dataset":
            kind = dataset_kind(v)
            if kind == "import":
                self.importable(v, "dataset loader", where)
            elif kind in ("npz", "folder"):
                v = self.data_path(v, kind, where)
        return v

    def importable(self, path: str, what: str, where: str) -> None:
        from qatlab.importpath import ImportPathError, resolve

        try:
            resolve(path, what)
        except ImportPathError as e:
            raise self.err(where, str(e)) from None

    def data_path(self, value: str, kind: str, where: str) -> str:
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = (self.base_dir or Path.cwd()) / p
        p = Path(os.path.normpath(p))
        if kind == "npz" and not p.is_file():
            raise self.err(where, f"no such .npz file {str(p)!r}")
        if kind == "folder" and not p.is_dir():
            raise self.err(where, f"no such image folder {str(p)!r}")
        return str(p)

    def trial_keys(self, d: Mapping[str, Any], where: str) -> None:
        unknown = [k for k in d if k not in self.fields and k != "bits"]
        if unknown:
            raise self.err(
                f"{where}.{unknown[0]}" if where else unknown[0],
                f"unknown trial key; valid keys: bits, {', '.join(sorted(self.fields))}",
            )
        if "bits" in d:
            both = [k for k in ("w_bits", "a_bits") if k in d]
            if both:
                raise self.err(f"{where}.bits", f"'bits' sets w_bits and a_bits; do not also give {' and '.join(both)} here")


def _expand_bits(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k != "bits"}
    if "bits" in d:
        out["w_bits"] = out["a_bits"] = d["bits"]
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse_spec(
    data: Any,
    path: str | os.PathLike[str] | None = None,
    text: str = "",
    source: str | None = None,
    locations: Mapping[str, tuple[int, int]] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Spec:
    """Validate a spec already read from YAML (a mapping) and expand its trials.

    ``source`` names the spec in error messages (default: its path); ``locations``
    (key path -> line, column in ``path``) adds the line to them. Relative data paths
    are taken from ``base_dir``, else ``path``'s folder, else the working directory.
    """
    from qatlab.config import FP32_IGNORED, ConfigError, TrainConfig, config_digest

    p = Path(path) if path is not None else None
    base = Path(base_dir).resolve() if base_dir is not None else p.resolve().parent if p else None
    c = _Checker(source or (str(p) if p else "<spec>"), locations, base)
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else f"{type(data).__name__}"
        raise SpecError(f"{c.source}: expected a mapping with at least 'name' and 'grid' or 'include', got {got}")
    top = c.mapping(data, "spec")
    unknown = [k for k in top if k not in TOP_KEYS]
    if unknown:
        raise c.err(unknown[0], f"unknown key; valid keys: {', '.join(TOP_KEYS)}")

    name = top.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise c.err("name", f"required: a folder-safe name (letters, digits, '.', '_', '-'), got {name!r}")
    description = top.get("description") or ""
    if not isinstance(description, str):
        raise c.err("description", f"expected a string, got {description!r}")
    save_models = top.get("save_models", True)
    if not isinstance(save_models, bool):
        raise c.err("save_models", f"expected true or false, got {save_models!r}")

    # Defaults: TrainConfig's, then the top-level model/dataset, then `train`.
    defaults: dict[str, Any] = TrainConfig().to_dict()
    provenance: dict[str, str] = {}
    for key in ("model", "dataset"):
        if key in top:
            defaults[key] = c.trial_value(key, top[key], key)
            provenance[key] = key
    train = c.mapping(top.get("train"), "train")
    c.trial_keys(train, "train")
    for key in ("model", "dataset"):
        if key in train and key in top:
            raise c.err(f"train.{key}", f"{key} is also given at the top level; give it once")
    for k, v in train.items():
        train[k] = c.trial_value(k, v, f"train.{k}")
    for k, v in _expand_bits(train).items():
        defaults[k] = v
        provenance[k] = f"train.{'bits' if 'bits' in train and k in ('w_bits', 'a_bits') else k}"

    grid_raw = c.mapping(top.get("grid"), "grid")
    c.trial_keys(grid_raw, "grid")
    grid: dict[str, tuple[Any, ...]] = {}
    for k, v in grid_raw.items():
        values = _as_list(v)
        if not values:
            raise c.err(f"grid.{k}", "empty list: the cartesian product would have no trials")
        grid[k] = tuple(
            c.trial_value(k, x, f"grid.{k}[{i}]" if isinstance(v, (list, tuple)) else f"grid.{k}") for i, x in enumerate(values)
        )

    include_raw = top.get("include")
    if include_raw is None:
        include_raw = []
    if not isinstance(include_raw, list):
        raise c.err("include", f"expected a list of mappings, got {type(include_raw).__name__}")
    include: list[dict[str, Any]] = []
    for i, entry in enumerate(include_raw):
        e = c.mapping(entry, f"include[{i}]")
        if entry is None:
            raise c.err(f"include[{i}]", "expected a mapping of trial keys, got null")
        c.trial_keys(e, f"include[{i}]")
        for k, v in e.items():
            values = _as_list(v)
            if not values:
                raise c.err(f"include[{i}].{k}", "empty list")
            checked = [c.trial_value(k, x, f"include[{i}].{k}") for x in values]
            e[k] = checked if isinstance(v, (list, tuple)) else checked[0]
        include.append(e)
    if not grid_raw and not include:
        raise c.err("grid", "the spec defines no trials: give a non-empty 'grid' and/or 'include'")

    resources = _parse_resources(c, top.get("resources"))

    # ---- expansion ----
    count = math.prod(len(v) for v in grid.values()) if grid else 0
    count += sum(math.prod(len(v) for v in e.values() if isinstance(v, list)) for e in include)
    if count > MAX_TRIALS:
        raise c.err(
            "grid" if grid else "include", f"expands to {count} trials, more than the {MAX_TRIALS} a spec may hold: split the sweep"
        )
    # The grid's defaults for an include entry: the first value of each grid list.
    grid_first = {k: v[0] for k, v in grid.items()}
    candidates: list[tuple[dict[str, Any], str, dict[str, str]]] = []
    if grid:
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, combo))
            prov = dict(provenance)
            for k in point:
                for kk in ("w_bits", "a_bits") if k == "bits" else (k,):
                    prov[kk] = f"grid.{k}"
            candidates.append(({**defaults, **_expand_bits(point)}, "grid", prov))
    base = {**defaults, **_expand_bits(grid_first)}
    base_prov = dict(provenance)
    for k in grid_first:
        for kk in ("w_bits", "a_bits") if k == "bits" else (k,):
            base_prov[kk] = f"grid.{k}"
    for i, e in enumerate(include):
        list_keys = [k for k, v in e.items() if isinstance(v, list)]
        for combo in itertools.product(*(e[k] for k in list_keys)):
            entry = {**e, **dict(zip(list_keys, combo))}
            # An entry's w_bits/a_bits override a grid `bits` default and vice versa.
            merged = {**base, **_expand_bits(entry)}
            prov = dict(base_prov)
            for k in entry:
                for kk in ("w_bits", "a_bits") if k == "bits" else (k,):
                    prov[kk] = f"include[{i}].{k}"
            candidates.append((merged, f"include[{i}]", prov))

    trials: list[Trial] = []
    seen: set[str] = set()
    collapsed = 0
    fresh = TrainConfig().to_dict()
    for cfg, origin, prov in candidates:
        if cfg.get("method") == "fp32":
            cfg = {**cfg, **{k: fresh[k] for k in FP32_IGNORED}}
        error = None
        try:
            tid = TrainConfig.from_dict(cfg).trial_id
        except ConfigError as e:
            where = prov.get(e.field, e.field if e.field in cfg else "")
            error = f"{e} ({where + ' in ' + c.at(where) if where else c.source})"
            # an impossible config still gets an id, the one it would have once fixed
            tid = config_digest(cfg)
        if tid in seen:
            collapsed += 1
            continue
        seen.add(tid)
        trials.append(Trial(trial_id=tid, config=cfg, origin=origin, error=error))
    if not any(t.valid for t in trials):
        first = trials[0].error if trials else "no trials"
        raise SpecError(f"{c.source}: no valid trial: {first}")
    trials = _with_labels(trials)
    mixed = _parse_mixed(c, top["mixed"], trials) if top.get("mixed") is not None else None
    return Spec(
        name=name,
        path=p,
        description=description,
        defaults=defaults,
        grid=grid,
        include=tuple(include),
        resources=resources,
        save_models=save_models,
        trials=tuple(trials),
        collapsed=collapsed,
        text=text,
        mixed=mixed,
    )


def _parse_resources(c: _Checker, raw: Any) -> Resources:
    r = c.mapping(raw, "resources")
    unknown = [k for k in r if k not in RESOURCE_KEYS]
    if unknown:
        raise c.err(f"resources.{unknown[0]}", f"unknown key; valid keys: {', '.join(RESOURCE_KEYS)}")

    def number(key: str, default: float | None, minimum: float, allow_none: bool = False) -> float | None:
        v = r.get(key, default)
        if v is None and allow_none:
            return None
        v = _number("float", v, f"{c.at(f'resources.{key}')}: resources.{key}")
        if v < minimum:
            raise c.err(f"resources.{key}", f"must be >= {minimum:g}, got {v:g}")
        return v

    num_cpus = number("num_cpus", 1.0, 0.0)
    num_gpus = number("num_gpus", 0.0, 0.0)
    assert num_cpus is not None and num_gpus is not None
    if num_gpus > 1 and not float(num_gpus).is_integer():
        raise c.err("resources.num_gpus", f"a fraction must be below 1 (Ray shares one GPU); above 1 use a whole number, got {num_gpus:g}")
    memory = r.get("memory")
    if memory is not None:
        memory = _number("int", memory, f"{c.at('resources.memory')}: resources.memory")
        if memory < 1:
            raise c.err("resources.memory", f"bytes, must be >= 1, got {memory}")
    custom_raw = c.mapping(r.get("custom"), "resources.custom")
    custom: dict[str, float] = {}
    for k, v in custom_raw.items():
        if k in ("CPU", "GPU", "memory", "object_store_memory"):
            raise c.err(f"resources.custom.{k}", "a built-in resource: use num_cpus / num_gpus / memory")
        v = _number("float", v, f"{c.at(f'resources.custom.{k}')}: resources.custom.{k}")
        if v <= 0:
            raise c.err(f"resources.custom.{k}", f"must be > 0, got {v:g}")
        custom[k] = v
    max_retries = r.get("max_retries", 3)
    max_retries = _number("int", max_retries, f"{c.at('resources.max_retries')}: resources.max_retries")
    if max_retries < -1:
        raise c.err("resources.max_retries", f"must be >= 0 (or -1: retry forever), got {max_retries}")
    timeout_s = number("timeout_s", None, 0.0, allow_none=True)
    if timeout_s is not None and timeout_s <= 0:
        raise c.err("resources.timeout_s", f"must be > 0 or null, got {timeout_s:g}")
    if num_cpus == 0 and num_gpus == 0 and not custom:
        raise c.err("resources", "num_cpus, num_gpus and custom are all zero: Ray would run every trial at once")
    return Resources(num_cpus=num_cpus, num_gpus=num_gpus, memory=memory, custom=custom, max_retries=max_retries, timeout_s=timeout_s)


# ---- the mixed block ----------------------------------------------------------------

MIXED_KEYS = ("metric", "budgets", "sensitivity", "candidates", "act_candidates", "options", "fpga", "asic")
MIXED_FPGA_KEYS = ("device", "target_fps")
# The ArrayConfig fields a spec's `mixed.asic` may set: everything that changes what the
# array costs. The others are not knobs of the array a plan prices: packing is the cost
# model's own (qatlab.hw.asic.packing fixes it), the offsets only lay out SCALE-Sim's
# address space, and run_name, source and lines are labels.
MIXED_ASIC_KEYS = (
    "rows", "cols", "ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb", "dataflow", "bandwidth_mode", "bandwidth",
    "ifmap_bank_bandwidth", "filter_bank_bandwidth", "freq_mhz", "sparsity", "dram_model", "node_nm", "vdd", "vector_lanes",
)  # fmt: skip
MIXED_ASIC_FIXED = ("pack", "pack_max")
MIXED_ASIC_IGNORED = ("ifmap_offset", "filter_offset", "ofmap_offset", "run_name", "source", "lines")
# A plan's base config and its mixed trials are W8A8 outside layer_bits: uniform W8A8 is
# what relative budgets are fractions of, and the quantizers no layer reads (a network's
# output) keep the bits the cost tables priced them at.
MIXED_BASE_BITS = 8


@dataclass(frozen=True)
class MixedBudget:
    value: float
    relative: bool  # a fraction (for fpga_fps a multiple) of uniform W8A8's cost, else absolute in the metric's unit
    name: str  # mixed-<metric>-<value>[<unit>]: the trials' name in results and reports


@dataclass(frozen=True)
class MixedPlan:
    """One plan: a base config (a qat trial of the spec at W8A8, without layer_bits) and
    the block's budgets. ``derived_from``: the spec's qat trials that differ from the
    base only in their bits (W8A8, W4A4 and W2A2 of one grid share one plan)."""

    plan_id: str
    base: Mapping[str, Any]
    base_id: str
    derived_from: tuple[str, ...]
    label: str

    def placeholder_id(self, budget: MixedBudget) -> str:
        """The trial id of ``budget``'s trial while it has no layer_bits (its plan failed,
        or no configuration meets it): deterministic, so a rerun finds its record."""
        import hashlib

        return hashlib.sha256(f"mixed:{self.plan_id}:{budget.name}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MixedSpec:
    """The ``mixed:`` block (docs/cli.md): what to plan, and one plan per base config."""

    metric: str
    budgets: tuple[MixedBudget, ...]
    sensitivity: str
    candidates: tuple[int, ...]
    options: Mapping[str, Any]
    fpga: Mapping[str, Any] | None  # {device, target_fps}; None: no FPGA figures
    plans: tuple[MixedPlan, ...]
    # ArrayConfig fields that differ from its defaults (JSON values); None: the default array
    asic: Mapping[str, Any] | None = None
    act_candidates: tuple[int, ...] | None = None  # the activation knobs' own; None: ``candidates``

    def settings(self) -> dict[str, Any]:
        """Everything a plan depends on besides its base config (JSON)."""
        out: dict[str, Any] = {
            "metric": self.metric,
            "budgets": [{"value": b.value, "relative": b.relative, "name": b.name} for b in self.budgets],
            "sensitivity": self.sensitivity,
            "candidates": list(self.candidates),
            "options": dict(self.options),
            "fpga": dict(self.fpga) if self.fpga is not None else None,
        }
        # Only when given: the plans of a spec on the default array keep the ids (and the
        # stored plan files) they had before arrays could be chosen.
        if self.asic is not None:
            out["asic"] = dict(self.asic)
        if self.act_candidates is not None:  # likewise
            out["act_candidates"] = list(self.act_candidates)
        return out


def array_config(asic: Mapping[str, Any] | None) -> Any:
    """The ``qatlab.hw.asic.ArrayConfig`` of a ``mixed.asic`` mapping as :attr:`MixedSpec.asic`
    holds it (None: the default array). Raises ``qatlab.hw.asic.ConfigError``."""
    from qatlab.hw.asic import ArrayConfig

    if asic is None:
        return None
    return ArrayConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in asic.items()})


def mixed_plan_word(metric: str) -> str:
    """What stands in a plan's label where its trials' label has their bits (``qat plan asic_energy lsq ...``)."""
    return f"plan {metric}"


def _parse_bit_widths(c: _Checker, raw: Any, key: str, relative: bool) -> tuple[int, ...]:
    """``mixed.<key>``: distinct bit widths in 2..8, with 8 among them when a budget is
    a fraction of uniform W8A8."""
    from qatlab.mixed import MixedPrecisionError
    from qatlab.mixed.space import check_candidates

    if not isinstance(raw, list):
        raise c.err(f"mixed.{key}", f"expected a list of bit widths, got {raw!r}")
    try:
        bits = check_candidates(raw, key)
    except MixedPrecisionError as e:
        raise c.err(f"mixed.{key}", str(e)) from None
    if MIXED_BASE_BITS not in bits and relative:
        raise c.err(f"mixed.{key}", f"relative budgets are fractions of uniform W8A8: the {key} must include 8, got {list(bits)}")
    return bits


def _parse_mixed(c: _Checker, raw: Any, trials: Sequence[Trial]) -> MixedSpec:
    """The ``mixed:`` block, checked against qatlab.mixed's own registries."""
    import hashlib

    from qatlab.config import ConfigError, TrainConfig
    from qatlab.hw.fpga import device_names, get_device
    from qatlab.mixed import methods
    from qatlab.mixed.metrics import METRICS
    from qatlab.mixed.registry import DEFAULT_OPTIONS

    m = c.mapping(raw, "mixed")
    unknown = [k for k in m if k not in MIXED_KEYS]
    if unknown:
        raise c.err(f"mixed.{unknown[0]}", f"unknown key; valid keys: {', '.join(MIXED_KEYS)}")
    metric = m.get("metric")
    if metric is None:
        raise c.err("mixed", f"'metric' is required: one of {', '.join(METRICS)}")
    if not isinstance(metric, str) or metric not in METRICS:
        raise c.err("mixed.metric", f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    unit = METRICS[metric].unit
    fps = METRICS[metric].kind == "fps"

    raw_budgets = m.get("budgets")
    if not isinstance(raw_budgets, list) or not raw_budgets:
        raise c.err("mixed.budgets" if "budgets" in m else "mixed", "'budgets' must be a non-empty list, e.g. [0.3, 0.5, 0.7]")
    budgets: list[MixedBudget] = []
    for i, b in enumerate(raw_budgets):
        where = f"mixed.budgets[{i}]"
        if isinstance(b, Mapping):
            keys = [k for k in b if k not in ("value", "relative")]
            if keys or len(b) != 1:
                raise c.err(where, "a mapping budget is {value: X} (absolute, in " + unit + ") or {relative: X} (of uniform W8A8)")
            relative = "relative" in b
            value = _number("float", b["relative" if relative else "value"], f"{c.at(where)}: {where}")
        else:
            relative = True
            value = _number("float", b, f"{c.at(where)}: {where}")
            if not fps and value > 1.0:
                raise c.err(
                    where,
                    f"a bare number is a fraction of uniform W8A8's {metric} (<= 1), got {value:g}; "
                    f"write {{value: {value:g}}} for an absolute budget in {unit}",
                )
        if not value > 0:
            raise c.err(where, f"must be > 0, got {value:g}")
        name = f"mixed-{metric}-{value:g}" + ("" if relative else unit)
        if any(x.name == name for x in budgets):
            raise c.err(where, f"budget {name} is given twice")
        budgets.append(MixedBudget(float(value), relative, name))

    known = methods()
    sensitivity = m.get("sensitivity", "hessian")
    if not isinstance(sensitivity, str) or sensitivity not in known:
        raise c.err("mixed.sensitivity", f"unknown sensitivity method {sensitivity!r}; expected one of {', '.join(known)}")
    options = c.mapping(m.get("options"), "mixed.options")
    bad = [k for k in options if k not in DEFAULT_OPTIONS[sensitivity]]
    if bad:
        valid = ", ".join(DEFAULT_OPTIONS[sensitivity]) or "none"
        raise c.err(f"mixed.options.{bad[0]}", f"not an option of sensitivity {sensitivity!r}; options: {valid}")
    try:
        options = json.loads(json.dumps(options, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise c.err("mixed.options", f"values must be plain JSON: {e}") from None

    relative = any(b.relative for b in budgets)
    candidates = _parse_bit_widths(c, m.get("candidates", [2, 4, 8]), "candidates", relative)
    act_candidates = _parse_bit_widths(c, m["act_candidates"], "act_candidates", relative) if "act_candidates" in m else None

    fpga: dict[str, Any] | None = None
    if "fpga" in m or metric.startswith("fpga_"):
        f = c.mapping(m.get("fpga"), "mixed.fpga")
        bad = [k for k in f if k not in MIXED_FPGA_KEYS]
        if bad:
            raise c.err(f"mixed.fpga.{bad[0]}", f"unknown key; valid keys: {', '.join(MIXED_FPGA_KEYS)}")
        device = f.get("device", "ZCU104")
        try:
            device = get_device(device).name if isinstance(device, str) else None
        except ValueError:
            device = None
        if device is None:
            raise c.err("mixed.fpga.device", f"unknown FPGA device {f.get('device')!r}; known devices: {', '.join(device_names())}")
        target = f.get("target_fps")
        if target is not None:
            target = _number("float", target, f"{c.at('mixed.fpga.target_fps')}: mixed.fpga.target_fps")
            if not target > 0:
                raise c.err("mixed.fpga.target_fps", f"must be > 0 or null, got {target:g}")
        fpga = {"device": device, "target_fps": target}
    asic = _parse_asic(c, m["asic"]) if m.get("asic") is not None else None

    # One plan per distinct base: the spec's qat trials with their bits set to W8A8.
    bases: dict[str, tuple[dict[str, Any], list[str], str]] = {}
    for t in trials:
        if not t.valid or t.config.get("method") != "qat" or t.config.get("layer_bits"):
            continue
        base = {**t.config, "w_bits": MIXED_BASE_BITS, "a_bits": MIXED_BASE_BITS, "layer_bits": {}}
        try:
            base_id = TrainConfig.from_dict(base).trial_id
        except ConfigError as e:
            raise c.err("mixed", f"the W8A8 base of trial {t.label!r} is impossible: {e}") from None
        # labelled after its first trial, whose label names what varies across the spec
        label = t.label.replace(f"W{t.config['w_bits']}A{t.config['a_bits']}", mixed_plan_word(metric), 1)
        bases.setdefault(base_id, (base, [], label))[1].append(t.trial_id)
    if not bases:
        raise c.err(
            "mixed", "plans derive from the spec's qat trials, and it has no valid qat trial without layer_bits: add one (method: qat)"
        )
    spec = MixedSpec(metric, tuple(budgets), sensitivity, candidates, options, fpga, (), asic, act_candidates)
    settings = json.dumps(spec.settings(), sort_keys=True)
    plans = []
    for base_id, (base, derived, label) in bases.items():
        plan_id = hashlib.sha256(f"{base_id}:{settings}".encode()).hexdigest()[:16]
        plans.append(MixedPlan(plan_id, base, base_id, tuple(derived), label))
    return dataclasses.replace(spec, plans=tuple(plans))


def _parse_asic(c: _Checker, raw: Any) -> dict[str, Any] | None:
    """``mixed.asic``: ArrayConfig's fields under their own names (a SCALE-Sim file's
    ``[qatlab]`` section spells ours the same way), checked by ArrayConfig itself.

    Returns the fields that differ from ArrayConfig's defaults, as JSON values (None when
    none do), so a plan id changes with the array and with nothing else: ``{rows: 32}``
    and ``freq_mhz: 500`` against ``500.0`` plan once.
    """
    from qatlab.config import FieldTypeError, as_float, as_int
    from qatlab.hw.asic import ArrayConfig, ConfigError
    from qatlab.hw.limits import FLOAT_RANGES, out_of_range

    a = c.mapping(raw, "mixed.asic")
    defaults = {f.name: f.default for f in dataclasses.fields(ArrayConfig)}
    fields: dict[str, Any] = {}
    for k, v in a.items():
        key = f"mixed.asic.{k}"
        if k in MIXED_ASIC_FIXED:
            raise c.err(key, "the mixed-precision cost model packs sub-8-bit operands itself (qatlab.hw.asic.packing): leave it out")
        if k not in MIXED_ASIC_KEYS:
            raise c.err(key, f"unknown key; valid keys: {', '.join(MIXED_ASIC_KEYS)}")
        default = defaults[k]
        try:
            if isinstance(default, bool):
                if not isinstance(v, bool):
                    raise FieldTypeError(k, f"expected true or false, got {v!r}")
            elif isinstance(default, int):
                v = as_int(k, v)
            elif isinstance(default, float):
                v = as_float(k, v)
            elif isinstance(default, str):
                if not isinstance(v, str):
                    raise FieldTypeError(k, f"expected a string, got {v!r}")
            else:  # bandwidth: words per cycle, one number or SCALE-Sim's list of them
                v = tuple(as_int(k, x) for x in _as_list(v))
        except FieldTypeError as e:
            raise c.err(key, e.problem) from None
        if k in FLOAT_RANGES and (why := out_of_range(k, v)):
            raise c.err(key, why)
        # ArrayConfig's own checks, one field at a time (the others at their valid
        # defaults), so that the message points at the key that is wrong.
        try:
            ArrayConfig(**{k: v}, source=key)
        except ConfigError as e:
            raise c.err(key, str(e).removeprefix(f"{key}: ")) from None
        fields[k] = v
    try:
        ArrayConfig(**fields, source="mixed.asic")
    except ConfigError as e:
        raise c.err("mixed.asic", str(e).removeprefix("mixed.asic: ")) from None
    changed = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(fields.items()) if v != defaults[k]}
    return changed or None


# ---- labels -------------------------------------------------------------------------

_LABEL_KEYS = ("method", "w_bits", "a_bits", "ste", "granularity", "estimator", "seed")


def trial_label(cfg: Mapping[str, Any], extra: Iterable[str] = ()) -> str:
    """A short human name: ``qat W4A4 lsq channel seed=0`` (+ other keys that vary)."""
    if cfg.get("method") == "fp32":
        parts = ["fp32"]
    else:
        parts = [str(cfg.get("method")), f"W{cfg.get('w_bits')}A{cfg.get('a_bits')}", str(cfg.get("ste")), str(cfg.get("granularity"))]
        if cfg.get("estimator") != "minmax":
            parts.append(str(cfg.get("estimator")))
    parts.append(f"seed={cfg.get('seed')}")
    parts += [f"{k}={cfg.get(k)}" for k in extra]
    return " ".join(parts)


def _with_labels(trials: Sequence[Trial]) -> list[Trial]:
    # Keys (beyond the usual ones) whose value differs between trials go in the label;
    # fp32 trials' reset quantization keys do not count as differing.
    def varying(group: Sequence[Trial], skip: Iterable[str]) -> list[str]:
        keys = group[0].config if group else {}
        return [
            k for k in keys
            if k not in _LABEL_KEYS and k != "device" and k not in skip
            and len({json.dumps(t.config.get(k)) for t in group}) > 1
        ]  # fmt: skip

    from qatlab.config import FP32_IGNORED

    quant = [t for t in trials if t.config.get("method") != "fp32"]
    extra_q = varying(quant, ())
    extra_f = varying(list(trials), FP32_IGNORED)
    return [dataclasses.replace(t, label=trial_label(t.config, extra_f if t.config.get("method") == "fp32" else extra_q)) for t in trials]


def spec_from_dict(data: Mapping[str, Any], source: str = "<spec>", base_dir: str | os.PathLike[str] | None = None) -> Spec:
    """Build a Spec from a dict (benchmarks, notebooks); same validation as a file.

    ``base_dir``: the folder relative data paths are taken from (default: the working directory).
    """
    import yaml

    try:  # kept beside the results as spec.yaml
        text = yaml.safe_dump(dict(data), sort_keys=False)
    except yaml.YAMLError:
        text = ""
    return parse_spec(dict(data), None, text, source, base_dir=base_dir)
