"""``workbook run``: the main job — the sweep on Ray, then every notebook, then HTML and the index.

    reports/<run-id>/sweep/            the sweep's results (results.parquet, trials/…)
    reports/<run-id>/<notebook>.ipynb  executed notebooks (papermill)
    reports/<run-id>/<notebook>.html   self-contained HTML (nbconvert)
    reports/<run-id>/run.json          manifest: spec, date, status, headline metrics
    reports/index.html                 every run

``-p KEY=VALUE``: a TrainConfig field overrides the spec's ``train`` defaults for every
trial (``-p epochs=1``); a notebook parameter goes to the notebooks that declare it
(``-p fpga_device=PYNQ-Z1``). Anything else is an error listing the valid keys.

Nothing is written before the run folder's lock (``sweep/.sweep.lock``) is held: a
second run into a live run's folder is refused and leaves it as it was. A folder
holding another spec's results is refused unless ``--force``, which moves them (and
the old run's manifest and notebooks) aside into ``OUT/replaced-<date>/``. Ctrl-C
stops the sweep or the notebook running, writes ``run.json`` with status
``interrupted`` and exits 130; the same command again resumes. The index is
refreshed only in the reports root (``reports/``) or a folder that holds a qatlab
index already.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

DEFAULT_SPEC = "quick"
REPORTS_ROOT = Path("reports")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", default=DEFAULT_SPEC, help=f"spec name (workbook/specs/NAME.yaml) or YAML file (default: {DEFAULT_SPEC})")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--out", default=None, help="run folder (default: reports/<date>-<spec>)")
    p.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE", help="trial or notebook parameter")
    p.add_argument("--no-input", action="store_true", default=True, help="hide code in the HTML (the default)")
    p.add_argument("--show-code", dest="no_input", action="store_false", help="show the notebooks' code and In/Out prompts in the HTML")
    from workbook.sweep import positive_int  # the sweep command's own validator, not a copy

    p.add_argument("--max-concurrent", type=positive_int, default=None, metavar="N", help="at most N trials at once")
    p.add_argument(
        "--force", action="store_true",
        help="run every trial again; results of another spec in --out are moved aside into --out/replaced-<date>/ "
        "(without --force such a folder is refused)",
    )  # fmt: skip


def notebook_parameters() -> dict[str, dict[str, Any]]:
    """Each notebook's declared parameters (from its ``parameters`` cell)."""
    import papermill as pm

    from workbook.notebooks import NOTEBOOKS, notebook_dir
    from workbook.report import MIXED_PAGE

    # the mixed page runs only where the sweep has mixed trials (report.pages_for)
    names = (*NOTEBOOKS, MIXED_PAGE) if (notebook_dir() / f"{MIXED_PAGE}.ipynb").is_file() else NOTEBOOKS
    return {n: {k: v.get("default") for k, v in pm.inspect_notebook(str(notebook_dir() / f"{n}.ipynb")).items()} for n in names}


def parse_params(pairs: list[str], nb_params: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``KEY=VALUE`` pairs (values as YAML scalars) into (train overrides, notebook parameters)."""
    import yaml

    from qatlab.config import TrainConfig
    from workbook.errors import CommandError

    train_keys = set(TrainConfig.__dataclass_fields__)
    nb_keys = {k for d in nb_params.values() for k in d} - {"run_dir"}
    train: dict[str, Any] = {}
    nbs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"-p {pair!r}: expected KEY=VALUE")
        if key in train_keys or key in nb_keys:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError as e:
                problem = " ".join(str(getattr(e, "problem", None) or e).split())
                raise CommandError(f"-p {key}: {value!r} is not a YAML value ({problem})", where="-p",
                                   fix="quote it, e.g. -p 'key=\"text\"', or give a number, list [a, b] or mapping {k: v}") from None  # fmt: skip
            (train if key in train_keys else nbs)[key] = parsed
        else:
            raise CommandError(
                f"-p {key}: unknown parameter; trial keys: {', '.join(sorted(train_keys))}; notebook keys: {', '.join(sorted(nb_keys))}"
            )
    return train, nbs


def load_run_spec(name: str, train_overrides: dict[str, Any]):
    import yaml

    from workbook.errors import CommandError
    from workbook.spec import SpecError, load_spec, resolve_spec_path, spec_from_dict

    try:
        if not train_overrides:
            return load_spec(name)
        path = resolve_spec_path(name)
        load_spec(path)  # full validation, with file/line messages, before merging
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        over = dict(train_overrides)
        for key in ("model", "dataset"):  # top-level keys of a spec, not train defaults
            if key in over:
                data[key] = over.pop(key)
        data["train"] = {**(data.get("train") or {}), **over}
        return spec_from_dict(data, f"{path} with -p overrides", base_dir=path.resolve().parent)
    except SpecError as e:
        raise CommandError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from workbook.errors import CommandError
    from workbook.results import ResultStore, SweepLockedError
    from workbook.sweep.cli import ensure_out_dir

    nb_defaults = notebook_parameters()
    train_over, nb_over = parse_params(args.params, nb_defaults)
    spec = load_run_spec(args.spec, train_over)
    date = dt.datetime.now()
    out = Path(args.out) if args.out else REPORTS_ROOT / f"{date:%Y%m%d-%H%M%S}-{spec.name}"
    ensure_out_dir(out)
    store = ResultStore((out / "sweep").resolve())
    with contextlib.ExitStack() as held:
        try:  # first: a live run's folder is refused before anything of it is touched
            held.enter_context(store.lock())
        except SweepLockedError as e:
            raise CommandError(str(e), fix="wait for that run, or give another --out") from None
        except OSError as e:
            raise CommandError(
                f"cannot write in {store.root}: {e.strerror or e}", where="--out", fix="choose a folder you can write"
            ) from None
        return _run_locked(args, spec, out, store, date, nb_defaults, nb_over)


def _run_locked(args: argparse.Namespace, spec: Any, out: Path, store: Any, date: dt.datetime,
                nb_defaults: dict[str, dict[str, Any]], nb_over: dict[str, Any]) -> int:  # fmt: skip
    from workbook.errors import one_line
    from workbook.notebooks import run_notebooks
    from workbook.report import MANIFEST, headline, pages_for, refresh_index, write_json
    from workbook.sweep import run_sweep
    from workbook.sweep.cli import ray_session
    from workbook.sweep.driver import check_foreign
    from workbook.sweep.mixed import spec_trial_ids

    t0 = time.perf_counter()
    sweep_dir = store.root
    foreign = store.foreign_ids(spec_trial_ids(spec, store))
    if foreign:
        check_foreign(spec, store, replace=bool(args.force))  # refuses without --force
        dest = set_aside_run(out, store, foreign)
        print(f"moved {len(foreign)} results of another spec and the run's manifest and notebooks to {dest}", file=sys.stderr)
    manifest: dict[str, Any] = {
        "run_id": out.name, "date": date.isoformat(timespec="seconds"), "spec": spec.name,
        "spec_source": str(spec.source), "params": args.params, "status": "running", "notebooks": [],
    }  # fmt: skip
    write_json(out / MANIFEST, manifest)
    phase = "sweep"
    try:
        print(f"[1/2] sweep {spec.name}: {len(spec.trials)} trials -> {sweep_dir}", file=sys.stderr, flush=True)
        with ray_session(args.address, sweep_dir) as started_local:
            summary = run_sweep(spec, sweep_dir, mode="force" if args.force else "resume", max_concurrent=args.max_concurrent,
                                cpu_fallback=started_local, lock=False)  # fmt: skip
        t_sweep = time.perf_counter() - t0
        manifest["sweep"] = {"ok": summary.ok, "failed": summary.failed, "ran": summary.ran, "failed_ids": summary.failed_ids}
        if summary.interrupted:  # the driver stopped its trials and kept what finished
            raise KeyboardInterrupt

        phase = "notebooks"
        print("[2/2] notebooks", file=sys.stderr, flush=True)
        params = notebook_params(spec, nb_defaults, nb_over, sweep_dir)
        with _interrupt_flag() as interrupted:
            results = run_notebooks(out, params, pages_for(sweep_dir), no_input=args.no_input, stop=interrupted.is_set)
        t_nb = time.perf_counter() - t0 - t_sweep
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        manifest.update(status=status, error=None if status == "interrupted" else one_line(e), stopped_in=phase,
                        timing_s={"total": round(time.perf_counter() - t0, 1)})  # fmt: skip
        with _no_interrupt():
            with contextlib.suppress(Exception):
                manifest["headline"] = headline(sweep_dir)
            with contextlib.suppress(OSError):
                write_json(out / MANIFEST, manifest)
                print(refresh_index(out.parent, REPORTS_ROOT), file=sys.stderr)
        if status == "interrupted":
            print(f"interrupted in the {phase}: run.json says so; run the same command again to resume", file=sys.stderr)
        raise

    failed_nb = [r for r in results if r.status != "ok"]
    manifest.update(
        status="ok" if summary.exit_code == 0 and not failed_nb else "failed",
        headline=headline(sweep_dir),
        notebooks=[
            {"name": r.name, "status": r.status, "html": str(r.html) if r.html else None, "error": r.error, "seconds": r.seconds}
            for r in results
        ],
        timing_s={"sweep": round(t_sweep, 1), "notebooks": round(t_nb, 1)},
    )
    write_json(out / MANIFEST, manifest)
    index_line = refresh_index(out.parent, REPORTS_ROOT)
    for r in results:
        flag = "ok    " if r.status == "ok" else "FAILED"
        print(f"  {flag} {r.html or r.ipynb}" + (f"  ({r.error.splitlines()[0]})" if r.error else ""))
    print(f"sweep: {summary.ok} ok, {summary.failed} failed ({t_sweep:.0f} s); notebooks {t_nb:.0f} s")
    print(index_line)
    return 0 if manifest["status"] == "ok" else 1


def notebook_params(
    spec: Any, nb_defaults: dict[str, dict[str, Any]], nb_over: dict[str, Any], sweep_dir: Path
) -> dict[str, dict[str, Any]]:
    """Each notebook's parameters: the -p values it declares, the sweep folder, the spec's dataset and model."""
    first = spec.trials[0].config if spec.trials else {}
    params: dict[str, dict[str, Any]] = {}
    for name, declared in nb_defaults.items():
        p = {k: v for k, v in nb_over.items() if k in declared}
        if "run_dir" in declared:
            p["run_dir"] = str(sweep_dir)
        for k in ("dataset", "model"):
            if k in declared and k in first and k not in p:
                p[k] = first[k]
        params[name] = p
    return params


def set_aside_run(out: Path, store: Any, foreign: list[str]) -> Path:
    """--force: another spec's sweep results and the old run's manifest and pages go to ``out/replaced-<date>/``."""
    from workbook.report import MANIFEST
    from workbook.results import REPLACED_PREFIX

    dest = store.set_aside(foreign, out / f"{REPLACED_PREFIX}{dt.datetime.now():%Y%m%d-%H%M%S}" / "sweep").parent
    for p in [out / MANIFEST, *out.glob("*.ipynb"), *out.glob("*.html")]:
        if p.is_file():
            shutil.move(str(p), str(dest / p.name))
    return dest


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt as usual and also sets the flag.

    A notebook's kernel may swallow the interrupt (papermill records it as a failed
    cell and returns): the flag still tells run_notebooks to stop.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag.set()
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def _no_interrupt() -> Iterator[None]:
    """A second Ctrl-C must not cut the final manifest write short: SIGINT waits for a moment."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
