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
from pathlib import Path
from typing import Any

from qatlab import atomic
from qatlab.atomic import write_text

MANIFEST = "run.json"


def write_json(path: Path, obj: Any) -> None:
    atomic.write_json(path, obj, default=str)


def headline(sweep_dir: Path) -> dict[str, Any]:
    """FP32 accuracy and the best quantized accuracy at each weight bit width."""
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
    for b, d in ok[ok.method != "fp32"].groupby("w_bits"):
        out[f"best_w{int(b)}_acc"] = round(100 * float(d.test_acc.max()), 2)
    return out


def build_index(root: str | os.PathLike[str]) -> Path:
    """``<root>/index.html``: every run under root, newest first, self-contained."""
    root = Path(root)
    runs = []
    for m in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            runs.append((m.parent, json.loads(m.read_text())))
        except (OSError, json.JSONDecodeError):
            runs.append((m.parent, {"run_id": m.parent.name, "status": "unreadable manifest"}))
    runs.sort(key=lambda r: str(r[1].get("date", "")), reverse=True)
    e = html.escape
    rows = []
    for folder, r in runs:
        h = r.get("headline", {})
        metrics = ", ".join(f"{k} {v}" for k, v in h.items()) or "-"
        links = " ".join(
            f'<a href="{e(folder.name)}/{e(Path(nb["html"]).name)}">{e(nb["name"])}</a>'
            + ("" if nb.get("status") == "ok" else ' <span class="bad">(failed)</span>')
            for nb in r.get("notebooks", [])
            if nb.get("html")
        )
        status = r.get("status", "?")
        rows.append(
            f'<tr><td>{e(str(r.get("run_id", folder.name)))}</td><td>{e(str(r.get("date", "")))}</td>'
            f'<td>{e(str(r.get("spec", "")))}</td><td class="{"ok" if status == "ok" else "bad"}">{e(status)}</td>'
            f"<td>{e(metrics)}</td><td>{links}</td></tr>"
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qatlab reports</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
.ok{{color:#070}}.bad{{color:#b00}}</style></head>
<body><h1>qatlab reports</h1>
<table><thead><tr><th>run</th><th>date</th><th>spec</th><th>status</th><th>headline (test accuracy %)</th><th>reports</th></tr></thead>
<tbody>
{chr(10).join(rows) or '<tr><td colspan="6">no runs yet</td></tr>'}
</tbody></table></body></html>
"""
    out = root / "index.html"
    write_text(out, page)
    return out


def rerender(run_dir: Path, no_input: bool = False) -> dict[str, Any]:
    """Re-render a run's executed notebooks to HTML and refresh its manifest."""
    from workbook.notebooks import render_html

    m = run_dir / MANIFEST
    manifest = (
        json.loads(m.read_text()) if m.exists() else {"run_id": run_dir.name, "date": dt.datetime.now().isoformat(timespec="seconds")}
    )
    notebooks = {nb["name"]: nb for nb in manifest.get("notebooks", [])}
    for ipynb in sorted(run_dir.glob("*.ipynb")):
        nb = notebooks.setdefault(ipynb.stem, {"name": ipynb.stem, "status": "ok"})
        try:
            nb["html"] = str(render_html(ipynb, no_input=no_input))
        except Exception as e:
            nb.update(status="failed", error=f"HTML rendering failed: {type(e).__name__}: {e}")
    manifest["notebooks"] = list(notebooks.values())
    sweep_dir = run_dir / "sweep"
    if sweep_dir.exists():
        manifest["headline"] = headline(sweep_dir)
    write_json(m, manifest)
    return manifest


def run(args: argparse.Namespace) -> int:
    from workbook.errors import CommandError

    dirs = [Path(d) for d in args.run_dirs]
    root = Path(args.root)
    if not dirs:
        dirs = sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
    for d in dirs:
        if not d.is_dir():
            raise CommandError(f"{d}: no such run folder")
    bad = 0
    for d in dirs:
        m = rerender(d, args.no_input)
        bad += sum(nb.get("status") != "ok" for nb in m["notebooks"])
        print(f"{d}: {len(m['notebooks'])} reports re-rendered")
    roots = {d.parent for d in dirs} or {root}
    for r in roots:
        print(f"index: {build_index(r)}")
    return 1 if bad else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="*", help="run folders (default: every run under --root)")
    p.add_argument("--root", default="reports", help="where runs and index.html live (default: reports)")
    p.add_argument("--no-input", action="store_true", help="hide code cells (for readers who do not program)")
