"""A sweep's results on disk: one JSON per finished trial, a parquet table rebuilt from them.

Layout of a sweep directory::

    <out>/spec.yaml                  the spec as run (copied on every run)
    <out>/sweep.json                 manifest: spec, trial ids and labels, last run's summary
    <out>/results.parquet            one row per trial of the spec that has a result
    <out>/trials/<trial_id>/result.json   the trial's record (status ok | failed)
    <out>/trials/<trial_id>/trial.log     its log (stdout/stderr/logging of the trial)
    <out>/trials/<trial_id>/model.pt, intmodel.pt   its checkpoints (if saved)

Every file is written to a temporary name in the same folder and renamed over the
target (``os.replace``), so a reader never sees half a file, and a killed sweep
leaves only complete results behind. ``result.json`` is written last for a trial,
after its log and checkpoints: its presence means the trial finished. A trial's files
are first written together into a staging folder (``<out>/.staging-*``) and only
then renamed into ``trials/<trial_id>/``: a full or read-only disk fails the write
before the trial's folder is touched, so it never holds a new checkpoint beside an
old record.

A folder that holds results of trials not in the spec being run is another spec's:
``foreign_ids`` finds them, and ``set_aside`` moves them (with the old ``spec.yaml``,
``sweep.json`` and ``results.parquet``) into ``<out>/replaced-<stamp>/``, so that
nothing is dropped from view without a trace.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from qatlab import atomic

# The contract's result columns (docs/cli.md), first and in this order; any other record field follows.
REQUIRED_COLUMNS = (
    "trial_id", "model", "dataset", "method", "w_bits", "a_bits", "granularity", "estimator",
    "ste", "seed", "status", "test_acc", "fp32_acc", "epochs", "train_s", "error",
)  # fmt: skip
# Arrow types of those columns, so that an empty or all-null column is still typed.
_COLUMN_TYPES = {
    **{c: "string" for c in ("trial_id", "model", "dataset", "method", "granularity", "estimator", "ste", "status", "error")},
    **{c: "int64" for c in ("w_bits", "a_bits", "seed", "epochs")},
    **{c: "float64" for c in ("test_acc", "fp32_acc", "train_s")},
    # mixed precision (workbook.sweep.mixed): numbers even when every plan failed
    **{c: "float64" for c in ("predicted_cost", "actual_cost", "mixed_budget", "mixed_sensitivity")},
}
RESULT_FILE = "result.json"
LOG_FILE = "trial.log"
PARQUET_FILE = "results.parquet"
LOCK_FILE = ".sweep.lock"
REPLACED_PREFIX = "replaced-"  # where --force moves another spec's results
STAGING_PREFIX = ".staging-"


class SweepLockedError(RuntimeError):
    """Another live sweep is writing into the same directory."""


# ---- JSON ---------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """Plain JSON values: NaN/inf → null (strict JSON), tuples → lists, the rest via str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        try:
            return jsonable(obj.item())
        except Exception:
            pass
    return str(obj)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    atomic.write_text(path, json.dumps(jsonable(obj), indent=1, sort_keys=False, allow_nan=False) + "\n")


# ---- the store ----------------------------------------------------------------------


class ResultStore:
    """Reads and writes one sweep directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def trials_dir(self) -> Path:
        return self.root / "trials"

    @property
    def parquet_path(self) -> Path:
        return self.root / PARQUET_FILE

    def trial_dir(self, trial_id: str) -> Path:
        return self.trials_dir / trial_id

    def result_path(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / RESULT_FILE

    def log_path(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / LOG_FILE

    def load(self, trial_id: str) -> dict[str, Any] | None:
        """The trial's record, or None if it has none (or an unreadable one: rerun it)."""
        p = self.result_path(trial_id)
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("trial_id") == trial_id else None

    def status(self, trial_id: str) -> str | None:
        rec = self.load(trial_id)
        return None if rec is None else str(rec.get("status"))

    def existing_ids(self) -> list[str]:
        if not self.trials_dir.is_dir():
            return []
        return sorted(p.parent.name for p in self.trials_dir.glob(f"*/{RESULT_FILE}") if not p.parent.name.startswith("."))

    def parquet_ids(self) -> list[str]:
        """Trial ids in results.parquet ([] when there is none or it is unreadable: it is rebuilt from the records)."""
        if not self.parquet_path.is_file():
            return []
        try:
            import pyarrow.parquet as pq

            return [str(t) for t in pq.read_table(self.parquet_path, columns=["trial_id"]).column("trial_id").to_pylist() if t]
        except Exception:  # a damaged table holds nothing the per-trial records do not
            return []

    def save(self, record: Mapping[str, Any], log: str | None = None, artifacts: Mapping[str, bytes] | None = None) -> Path:
        """Write a finished trial: checkpoints and log first, the record last.

        Everything is written into a staging folder first, then renamed into the
        trial's folder (the record last): an OSError while writing (a full or
        read-only disk) leaves the trial's folder exactly as it was.
        """
        tid = str(record["trial_id"])
        for name in artifacts or {}:
            if "/" in name or name.startswith(".") or name in (RESULT_FILE, LOG_FILE):
                raise ValueError(f"artifact name {name!r} is not a plain file name")
        d = self.trial_dir(tid)
        self.root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{tid}-", dir=self.root))
        try:
            names = []
            for name, data in (artifacts or {}).items():
                atomic.write_bytes(stage / name, data, mkdir=False)
                names.append(name)
            if log is not None:
                atomic.write_text(stage / LOG_FILE, log, mkdir=False)
                names.append(LOG_FILE)
            write_json_atomic(stage / RESULT_FILE, record)
            d.mkdir(parents=True, exist_ok=True)
            for name in names + [RESULT_FILE]:
                os.replace(stage / name, d / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return d / RESULT_FILE

    def save_failure(self, record: Mapping[str, Any]) -> bool:
        """Record a trial whose results could not be written, unless it has an ``ok`` record already.

        Returns whether the record is on disk. An ``ok`` result of an earlier run is
        worth more than the note that this run could not write a newer one.
        """
        tid = str(record["trial_id"])
        if self.status(tid) == "ok":
            return False
        try:
            self.trial_dir(tid).mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.result_path(tid), record)
        except OSError:
            return False
        return True

    def records(self, trial_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Records of ``trial_ids`` (in that order, missing ones skipped), or all of them."""
        ids = self.existing_ids() if trial_ids is None else trial_ids
        return [r for r in (self.load(t) for t in ids) if r is not None]

    def foreign_ids(self, trial_ids: Iterable[str]) -> list[str]:
        """Trials with results here (a record or a row of results.parquet) that are not in ``trial_ids``."""
        keep = set(trial_ids)
        return sorted((set(self.existing_ids()) | set(self.parquet_ids())) - keep)

    def set_aside(self, trial_ids: Iterable[str], dest: str | os.PathLike[str] | None = None) -> Path:
        """Move the trials ``trial_ids`` and the folder's spec.yaml, sweep.json, results.parquet to ``dest``.

        ``dest`` defaults to ``<out>/replaced-<YYYYmmdd-HHMMSS>``. Renames only (same
        filesystem): nothing is copied, so a full disk cannot stop it half way through
        a file, and an interruption leaves every file in one place or the other.
        """
        dest = Path(dest) if dest is not None else self.root / f"{REPLACED_PREFIX}{dt.datetime.now():%Y%m%d-%H%M%S}"
        n = 1
        base = dest
        while dest.exists():  # two replacements in one second
            n += 1
            dest = base.with_name(f"{base.name}-{n}")
        (dest / "trials").mkdir(parents=True)
        for name in ("spec.yaml", "sweep.json", PARQUET_FILE):
            if (self.root / name).is_file():
                os.replace(self.root / name, dest / name)
        for tid in trial_ids:
            if self.trial_dir(tid).is_dir():
                os.replace(self.trial_dir(tid), dest / "trials" / tid)
        return dest

    def rebuild_parquet(self, trial_ids: Sequence[str] | None = None) -> Path:
        """(Re)write results.parquet from the per-trial JSON files, atomically."""
        atomic.write_bytes(self.parquet_path, records_to_parquet_bytes(self.records(trial_ids)))
        return self.parquet_path

    def holder(self) -> dict[str, Any] | None:
        """The live process that holds this folder's lock (pid, host), or None."""
        holder = _read_lock(self.root / LOCK_FILE)
        return holder if holder is not None and _alive(holder) else None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for one sweep; a lock left by a dead process is taken over."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                if holder is not None and _alive(holder):
                    raise SweepLockedError(
                        f"{self.root}: another sweep (pid {holder.get('pid')} on {holder.get('host')}) is writing here; "
                        f"wait for it, or remove {path} if that process is gone"
                    ) from None
                path.unlink(missing_ok=True)  # stale: its owner is dead
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        else:
            raise SweepLockedError(f"{self.root}: could not take {path}")
        try:
            yield
        finally:
            if _read_lock(path) == me:
                path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def _alive(holder: Mapping[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell for another machine (shared filesystem): assume it lives
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


# ---- the table ----------------------------------------------------------------------


def columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The contract's columns first (present even when no record has them), then the rest."""
    cols: list[str] = list(REQUIRED_COLUMNS)
    seen = set(cols)
    for r in records:
        for k in r:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols


def records_to_parquet_bytes(records: Iterable[Mapping[str, Any]]) -> bytes:
    """A parquet file of the records, one row each, built column by column.

    Columns are built from the records directly (not through pandas) so an integer
    column with nulls stays integer (``limit_train``), lists stay lists (``gpu_ids``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dict(r) for r in records]
    arrays, names = [], []
    for col in columns(rows):
        values = [_cell(r.get(col)) for r in rows]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError):
            # Mixed types in one column (records from different code versions): text.
            arr = pa.array([None if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in values], pa.string())
        if pa.types.is_null(arr.type):
            arr = arr.cast(_COLUMN_TYPES.get(col, "string"))  # all-null column: give it a concrete type
        elif col in _COLUMN_TYPES and _COLUMN_TYPES[col] == "float64" and pa.types.is_integer(arr.type):
            arr = arr.cast("float64")
        elif pa.types.is_list(arr.type) and pa.types.is_null(arr.type.value_type):
            arr = arr.cast(pa.list_(pa.string()))  # e.g. gpu_ids that are all empty
        arrays.append(arr)
        names.append(col)
    table = pa.Table.from_arrays(arrays, names=names)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _cell(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, Mapping) and not v:  # parquet has no empty struct (e.g. model_args: {})
        return None
    return v


def read_results(root: str | os.PathLike[str]):  # -> pandas.DataFrame
    """The sweep's results.parquet as a DataFrame."""
    import pandas as pd

    return pd.read_parquet(Path(root) / PARQUET_FILE)
