"""``workbook run``: the main job — the sweep on Ray, then every notebook, then HTML and the index.

    reports/<run-id>/sweep/            the sweep's results (results.parquet, trials/…)
    reports/<run-id>/<notebook>.ipynb  executed notebooks (papermill)
    reports/<run-id>/<notebook>.html   self-contained HTML (nbconvert)
    reports/<run-id>/run.json          manifest: spec, date, status, headline metrics
    reports/index.html                 every run

``-p KEY=VALUE``: a TrainConfig field overrides the spec's ``train`` defaults for every
trial (``-p epochs=1``); a notebook parameter goes to the notebooks that declare it
(``-p fpga_device=PYNQ-Z1``). Anything else is an error listing the valid keys.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_SPEC = "quick"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", default=DEFAULT_SPEC, help=f"spec name (workbook/specs/NAME.yaml) or YAML file (default: {DEFAULT_SPEC})")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--out", default=None, help="run folder (default: reports/<date>-<spec>)")
    p.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE", help="trial or notebook parameter")
    p.add_argument("--no-input", action="store_true", help="hide code in the HTML (for readers who do not program)")
    from workbook.sweep import positive_int  # the sweep command's own validator, not a copy

    p.add_argument("--max-concurrent", type=positive_int, default=None, metavar="N", help="at most N trials at once")


def notebook_parameters() -> dict[str, dict[str, Any]]:
    """Each notebook's declared parameters (from its ``parameters`` cell)."""
    import papermill as pm

    from workbook.notebooks import NOTEBOOKS, notebook_dir

    return {n: {k: v.get("default") for k, v in pm.inspect_notebook(str(notebook_dir() / f"{n}.ipynb")).items()} for n in NOTEBOOKS}


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
        if key in train_keys:
            train[key] = yaml.safe_load(value)
        elif key in nb_keys:
            nbs[key] = yaml.safe_load(value)
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
    from workbook.notebooks import run_notebooks
    from workbook.report import MANIFEST, build_index, headline, write_json
    from workbook.sweep import connect, run_sweep

    t0 = time.perf_counter()
    nb_defaults = notebook_parameters()
    train_over, nb_over = parse_params(args.params, nb_defaults)
    spec = load_run_spec(args.spec, train_over)
    date = dt.datetime.now()
    out = Path(args.out) if args.out else Path("reports") / f"{date:%Y%m%d-%H%M%S}-{spec.name}"
    out.mkdir(parents=True, exist_ok=True)
    sweep_dir = (out / "sweep").resolve()
    manifest: dict[str, Any] = {
        "run_id": out.name, "date": date.isoformat(timespec="seconds"), "spec": spec.name,
        "spec_source": str(spec.source), "params": args.params, "status": "running", "notebooks": [],
    }  # fmt: skip
    write_json(out / MANIFEST, manifest)

    print(f"[1/2] sweep {spec.name}: {len(spec.trials)} trials -> {sweep_dir}", file=sys.stderr, flush=True)
    started_local, connected = connect(args.address)
    try:
        summary = run_sweep(spec, sweep_dir, max_concurrent=args.max_concurrent, cpu_fallback=started_local)
    finally:
        if connected:
            import ray

            ray.shutdown()
    t_sweep = time.perf_counter() - t0

    print("[2/2] notebooks", file=sys.stderr, flush=True)
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
    results = run_notebooks(out, params, no_input=args.no_input)
    t_nb = time.perf_counter() - t0 - t_sweep

    failed_nb = [r for r in results if r.status != "ok"]
    manifest.update(
        status="ok" if summary.exit_code == 0 and not failed_nb else "failed",
        sweep={"ok": summary.ok, "failed": summary.failed, "ran": summary.ran, "failed_ids": summary.failed_ids},
        headline=headline(sweep_dir),
        notebooks=[
            {"name": r.name, "status": r.status, "html": str(r.html) if r.html else None, "error": r.error, "seconds": r.seconds}
            for r in results
        ],
        timing_s={"sweep": round(t_sweep, 1), "notebooks": round(t_nb, 1)},
    )
    write_json(out / MANIFEST, manifest)
    index = build_index(out.parent)
    for r in results:
        flag = "ok    " if r.status == "ok" else "FAILED"
        print(f"  {flag} {r.html or r.ipynb}" + (f"  ({r.error.splitlines()[0]})" if r.error else ""))
    print(f"sweep: {summary.ok} ok, {summary.failed} failed ({t_sweep:.0f} s); notebooks {t_nb:.0f} s")
    print(f"index: {index}")
    return 0 if manifest["status"] == "ok" else 1
