"""Run manifests and ``reports/index.html``; ``workbook report`` re-renders without re-running.

Each run folder holds ``run.json`` (what ran, when, its status, headline metrics and
notebook statuses); the index is rebuilt from every ``*/run.json`` beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from qatlab import atomic
from qatlab.atomic import write_text

MANIFEST = "run.json"
# The page a run has only when its sweep has mixed-precision trials (a spec's `mixed:` block).
MIXED_PAGE = "mixed"
# In the <head> of every index build_index writes: an index.html without it is not ours to overwrite.
INDEX_MARKER = '<meta name="generator" content="qatlab-index">'


def write_json(path: Path, obj: Any) -> None:
    atomic.write_json(path, obj, default=str)


def headline(sweep_dir: Path) -> dict[str, Any]:
    """Trial counts, FP32 test accuracy (%) and the best quantized test accuracy (%) at
    each weight bit width: numbers, which the index lays out in columns with units."""
    p = sweep_dir / "results.parquet"
    if not p.exists():
        return {}
    import pandas as pd

    df = pd.read_parquet(p)
    ok = df[df.status == "ok"]
    out: dict[str, Any] = {"trials": int(len(df)), "ok": int(len(ok)), "failed": int((df.status != "ok").sum())}
    fp = ok[ok.method == "fp32"].test_acc
    if len(fp):
        out["fp32_acc"] = round(100 * float(fp.mean()), 2)
    for b, d in sorted(ok[ok.method != "fp32"].groupby("w_bits"), key=lambda kv: -kv[0]):
        out[f"best_w{int(b)}_acc"] = round(100 * float(d.test_acc.max()), 2)
    return out


def has_mixed(sweep_dir: Path) -> bool:
    """Whether the sweep's results hold mixed-precision trials (a non-null ``mixed`` column)."""
    p = sweep_dir / "results.parquet"
    if not p.is_file():
        return False
    import pyarrow.parquet as pq

    try:
        if "mixed" not in pq.read_schema(p).names:
            return False
        col = pq.read_table(p, columns=["mixed"]).column("mixed")
    except Exception:  # an unreadable table: _headline names it
        return False
    return col.null_count < len(col)


def pages_for(sweep_dir: Path) -> tuple[str, ...]:
    """The notebooks a run's report has: every run's, and the mixed page where the sweep
    has mixed trials (and the notebooks folder has the page: ``QATLAB_NOTEBOOKS`` may name another)."""
    from workbook.notebooks import NOTEBOOKS, notebook_dir

    mixed = has_mixed(sweep_dir) and (notebook_dir() / f"{MIXED_PAGE}.ipynb").is_file()
    return (*NOTEBOOKS, MIXED_PAGE) if mixed else NOTEBOOKS


_BEST = re.compile(r"best_w(\d+)_acc$")


def _acc_columns(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(headline key, column title) of the accuracy columns any run has: FP32, then
    the best quantized accuracy per weight bit width, most bits first."""
    keys = {k for r in runs for k in (r.get("headline") or {}) if isinstance(k, str)}
    cols = [("fp32_acc", "FP32 (%)")] if "fp32_acc" in keys else []
    bits = sorted((int(m.group(1)) for k in keys if (m := _BEST.match(k))), reverse=True)
    return cols + [(f"best_w{b}_acc", f"best W{b} (%)") for b in bits]


def _number(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "–"
    try:
        return f"{float(v):.2f}"
    except (TypeError, ValueError):
        return "–"


def _date(v: Any) -> str:
    try:
        return dt.datetime.fromisoformat(str(v)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(v or "")


def _params(r: dict[str, Any]) -> str:
    p = r.get("params") or []
    if isinstance(p, dict):
        p = [f"{k}={v}" for k, v in p.items()]
    if not isinstance(p, list):
        p = [str(p)]
    return " ".join(f"<code>{html.escape(str(x))}</code>" for x in p) or "–"


def build_index(root: str | os.PathLike[str]) -> Path:
    """``<root>/index.html``: every run under root, newest first, self-contained; links
    URL-encoded (a folder named ``run#1 50%`` works), numbers in columns with units."""
    root = Path(root)
    runs = []
    for m in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            data = json.loads(m.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except (OSError, ValueError):
            data = {"run_id": m.parent.name, "status": "unreadable manifest"}
        runs.append((m.parent, data))
    runs.sort(key=lambda r: str(r[1].get("date", "")), reverse=True)
    e = html.escape
    accs = _acc_columns([r for _, r in runs])
    rows = []
    for folder, r in runs:
        h = r.get("headline") or {}
        h = h if isinstance(h, dict) else {}
        links = " ".join(
            f'<a href="{e(quote(folder.name))}/{e(quote(Path(str(nb["html"])).name))}">{e(str(nb.get("name", "report")))}</a>'
            + ("" if nb.get("status") == "ok" else ' <span class="bad">(failed)</span>')
            for nb in r.get("notebooks") or []
            if isinstance(nb, dict) and nb.get("html")
        )
        status = str(r.get("status", "?"))
        trials = f"{h['ok']} ok" + (f", {h['failed']} failed" if h.get("failed") else "") if "ok" in h else "–"
        cells = [
            f"<td>{e(str(r.get('run_id', folder.name)))}</td>",
            f'<td class="nowrap">{e(_date(r.get("date", "")))}</td>',
            f"<td>{e(str(r.get('spec', '')))}</td>",
            f'<td class="params">{_params(r)}</td>',
            f'<td class="{"ok" if status == "ok" else "bad"}">{e(status)}</td>',
            f"<td>{e(trials)}</td>",
            *(f'<td class="num">{_number(h.get(k))}</td>' for k, _ in accs),
            f"<td>{links or '–'}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = ["run", "date", "spec", "parameters (-p)", "status", "trials", *(t for _, t in accs), "reports"]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{INDEX_MARKER}<title>qatlab reports</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}th{{background:#f4f4f4}}
td.num{{text-align:right}}td.nowrap{{white-space:nowrap}}td.params{{max-width:22em;overflow-wrap:anywhere}}
code{{font-size:0.85em}}.ok{{color:#070}}.bad{{color:#b00}}</style></head>
<body><h1>qatlab reports</h1>
<p>Accuracies: test accuracy in %, FP32 and the best quantized trial per weight bit width.</p>
<table><thead><tr>{"".join(f"<th>{e(h)}</th>" for h in head)}</tr></thead>
<tbody>
{chr(10).join(rows) or f'<tr><td colspan="{len(head)}">no runs yet</td></tr>'}
</tbody></table></body></html>
"""
    out = root / "index.html"
    write_text(out, page)
    return out


LEGACY_INDEX_TITLE = "<title>qatlab reports</title>"  # indexes written before INDEX_MARKER


def is_our_index(path: Path) -> bool:
    """Whether ``path`` is an index build_index wrote (so refreshing it overwrites nothing of anyone else)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return INDEX_MARKER in head or LEGACY_INDEX_TITLE in head


def may_write_index(folder: Path, root: Path) -> bool:
    """An index is written only into the reports root or a folder that holds one of ours already.

    Never over someone else's ``index.html``, and never into a folder the user did
    not name as a place for reports (``run --out some/where/x`` leaves ``some/where`` alone).
    """
    index = folder / "index.html"
    if index.exists():
        return is_our_index(index)
    return folder.resolve() == root.resolve()


def refresh_index(folder: Path, root: Path) -> str:
    """Rebuild ``folder``'s index where allowed; the line to print either way."""
    if not may_write_index(folder, root):
        why = "its index.html is not a qatlab index" if (folder / "index.html").exists() else "it is not the reports root"
        return f"index: not written in {folder} ({why}); `workbook report --root {folder}` writes one there"
    return f"index: {build_index(folder)}"


def is_run_folder(d: Path) -> bool:
    """A folder ``workbook run`` wrote: it has a manifest, or sweep results to rebuild one from."""
    sweep = d / "sweep"
    return (d / MANIFEST).is_file() or (sweep / "results.parquet").is_file() or (sweep / "trials").is_dir()


def _read_manifest(m: Path) -> dict[str, Any] | None:
    from workbook.errors import CommandError

    if not m.exists():
        return None
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CommandError(f"unreadable run manifest ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", where=str(m),
                           fix="delete it: `workbook report` rebuilds it from the folder's notebooks and sweep results") from None  # fmt: skip
    if not isinstance(data, dict):
        raise CommandError("run manifest is not a JSON object", where=str(m), fix="delete it: `workbook report` rebuilds it")
    return data


def _headline(sweep_dir: Path) -> dict[str, Any]:
    from workbook.errors import CommandError

    try:
        return headline(sweep_dir)
    except Exception as e:  # a truncated or foreign parquet: pyarrow's many error types
        raise CommandError(
            f"unreadable results table ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})",
            where=str(sweep_dir / "results.parquet"),
            fix=f"rebuild it from the trials' records: workbook sweep {sweep_dir / 'spec.yaml'} --out {sweep_dir} "
            "(finished trials do not run again)",
        ) from None


def rerender(run_dir: Path, no_input: bool = False) -> dict[str, Any]:
    """Re-render a run's executed notebooks to HTML and refresh its manifest.

    A notebook the manifest lists whose executed ``.ipynb`` is gone keeps its HTML if
    that is still there; if both are gone it is ``missing`` and has no link. Everything
    is read and checked before ``run.json`` is written, so an unreadable input changes
    nothing. The returned manifest also says, under ``rerendered``, which notebooks
    were rendered now (not written to ``run.json``).
    """
    from workbook.notebooks import render_html

    m = run_dir / MANIFEST
    manifest = _read_manifest(m) or {"run_id": run_dir.name, "date": dt.datetime.now().isoformat(timespec="seconds")}
    sweep_dir = run_dir / "sweep"
    head = _headline(sweep_dir) if sweep_dir.exists() else None
    notebooks = {nb["name"]: nb for nb in manifest.get("notebooks", []) if isinstance(nb, dict) and "name" in nb}
    if (
        head is not None
        and MIXED_PAGE not in notebooks
        and not (run_dir / f"{MIXED_PAGE}.ipynb").exists()
        and MIXED_PAGE in pages_for(sweep_dir)
    ):
        # a run whose mixed trials came after its pages (a resumed sweep): the page is made now
        from workbook.notebooks import execute

        r = execute(MIXED_PAGE, run_dir, {"run_dir": str(sweep_dir.resolve())})
        notebooks[MIXED_PAGE] = {"name": MIXED_PAGE, "status": r.status, "error": r.error, "seconds": r.seconds}
    rendered = []
    for ipynb in sorted(run_dir.glob("*.ipynb")):
        nb = notebooks.setdefault(ipynb.stem, {"name": ipynb.stem, "status": "ok"})
        nb.pop("missing", None)
        if nb.get("status") == "missing":
            nb["status"] = "ok"  # it is back (copied in by hand, or a rerun)
        try:
            nb["html"] = str(render_html(ipynb, no_input=no_input))
            rendered.append(ipynb.stem)
        except Exception as e:
            nb.update(status="failed", error=f"HTML rendering failed: {type(e).__name__}: {e}")
    for name, nb in notebooks.items():
        if (run_dir / f"{name}.ipynb").exists():
            continue
        html_path = run_dir / f"{name}.html"
        if html_path.is_file():
            nb["html"] = str(html_path)
            nb["missing"] = f"{name}.ipynb is gone: its HTML is kept as it was"
        else:
            nb.update(status="missing", html=None, missing=f"{name}.ipynb and {name}.html are gone")
    manifest["notebooks"] = list(notebooks.values())
    if head is not None:
        manifest["headline"] = head
    write_json(m, manifest)
    return {**manifest, "rerendered": rendered}


def run(args: argparse.Namespace) -> int:
    from workbook.errors import CommandError
    from workbook.results import ResultStore

    dirs = [Path(d) for d in args.run_dirs]
    root = Path(args.root)
    if not dirs:
        if not root.is_dir():
            raise CommandError(f"{root}: no such folder", where="--root", fix="give the folder that holds the runs")
        dirs = sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
    for d in dirs:  # all checked before anything is written
        if not d.is_dir():
            raise CommandError(f"{d}: no such run folder")
        if not is_run_folder(d):
            raise CommandError(f"{d}: not a run folder (no {MANIFEST}, no sweep results)",
                               fix="give a folder written by `workbook run`")  # fmt: skip
        live = ResultStore(d / "sweep").holder()
        if live is not None:  # its manifest is the live run's to write
            raise CommandError(f"{d}: a run is still writing here (pid {live.get('pid')} on {live.get('host')})",
                               fix="wait for it to finish, then run `workbook report` again")  # fmt: skip
    bad = 0
    for d in dirs:
        m = rerender(d, args.no_input)
        nbs = m["notebooks"]
        rendered = m["rerendered"]
        missing = [f"{nb['name']} ({nb['missing']})" for nb in nbs if nb.get("missing")]
        failed = [nb["name"] for nb in nbs if nb.get("status") not in ("ok", "missing")]
        bad += len(failed) + len(missing)
        line = f"{d}: {len(rendered)} of {len(nbs)} reports re-rendered"
        if missing:
            line += "; missing: " + ", ".join(missing) + f" (`workbook run --out {d}` remakes them)"
        if failed:
            line += "; failed: " + ", ".join(failed)
        print(line)
    roots = {d.parent for d in dirs} or {root}
    for r in sorted(roots):
        print(refresh_index(r, root))
    return 1 if bad else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="*", help="run folders (default: every run under --root)")
    p.add_argument("--root", default="reports", help="where runs and index.html live (default: reports)")
    p.add_argument("--no-input", action="store_true", default=True, help="hide code cells (the default)")
    p.add_argument("--show-code", dest="no_input", action="store_false", help="show the notebooks' code and In/Out prompts")
