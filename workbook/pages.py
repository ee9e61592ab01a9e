"""What an executed notebook becomes before nbconvert renders it: a report page.

papermill leaves two parameter cells (the notebook's defaults and the values it
injected); a reader needs neither, only the values that produced the page, once, in a
small table at its end. Absolute paths (the run folder, the checkout, the Python
installation) are a fact of the machine that ran it, not of the report: they are made
relative to the page, or shortened, so a copied report folder reads the same.
"""

from __future__ import annotations

import html
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

PARAM_TAGS = ("parameters", "injected-parameters")
PAGE_ONLY_TAG = "qatlab-page"  # a cell the page adds: its (empty) input is never shown
REPO = Path(__file__).resolve().parent.parent


def page_parameters(nb: Any) -> list[tuple[str, str, str]]:
    """(name, value, where it came from) of every parameter: the ``parameters`` cell's
    defaults overlaid with what papermill injected (values as Python source)."""
    injected = dict((nb.metadata.get("papermill") or {}).get("parameters") or {})
    for cell in nb.cells:  # papermill's own lookup reads every cell's tags
        cell.metadata.setdefault("tags", [])
    rows = []
    try:
        from papermill.inspection import _infer_parameters  # what `papermill --help-notebook` reads

        # The notebooks are Python; a notebook without kernelspec metadata is read as such.
        spec = nb.metadata.get("kernelspec") or {}
        declared = _infer_parameters(nb, name=spec.get("name") or "python3", language=spec.get("language") or "python")
    except Exception:  # a notebook without a parseable parameters cell: only the injected values
        declared = []
    for p in declared:
        if p.name in injected:
            rows.append((p.name, repr(injected.pop(p.name)), "this run"))
        else:
            rows.append((p.name, p.default, "default"))
    rows += [(k, repr(v), "this run") for k, v in injected.items()]
    return rows


def parameters_html(rows: list[tuple[str, str, str]]) -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><td>{html.escape(n)}</td><td><code>{html.escape(v)}</code></td><td>{html.escape(s)}</td></tr>" for n, v, s in rows)
    return (
        '<div class="run-parameters"><h2>Parameters</h2><table class="qatlab-table small">'
        f"<thead><tr><th>parameter</th><th>value</th><th>set by</th></tr></thead><tbody>{body}</tbody></table></div>"
    )


def path_replacements(page_dir: Path) -> list[tuple[str, str]]:
    """(absolute prefix, what the page says instead), longest first so the run folder
    wins over the checkout that may hold it."""
    pairs: dict[str, str] = {}
    for d in {page_dir.absolute(), page_dir.resolve()}:
        pairs[str(d) + os.sep] = ""
        pairs[str(d)] = "."
    for prefix, short in ((Path(sys.prefix), "<python>"), (REPO, "<qatlab>"), (Path.home(), "~")):
        if str(prefix) not in ("", os.sep):
            pairs[str(prefix)] = short
    out = []
    for k, v in pairs.items():
        out.append((k, v))
        q = quote(k)  # the same path inside a file:// link
        if q != k:
            out.append((q, quote(v) if v else v))
    return sorted(out, key=lambda kv: len(kv[0]), reverse=True)


def relative_paths(text: str, page_dir: Path) -> str:
    for prefix, short in path_replacements(page_dir):
        text = text.replace(prefix, short)
    return text


def _relative_value(source: str, page_dir: Path) -> str:
    """A parameter's value (Python source); an absolute path in it relative to the page."""
    import ast

    try:
        v = ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return relative_paths(source, page_dir)
    if isinstance(v, str) and os.path.isabs(v):
        try:
            return repr(os.path.relpath(v, page_dir.absolute()))
        except ValueError:  # another drive (Windows)
            return repr(Path(v).name)
    return relative_paths(source, page_dir)


def _clean(value: Any, page_dir: Path) -> Any:
    if isinstance(value, str):
        return relative_paths(value, page_dir)
    if isinstance(value, list):
        return [_clean(v, page_dir) for v in value]
    if isinstance(value, dict):
        return type(value)((k, _clean(v, page_dir)) for k, v in value.items())
    return value


def prepare(nb: Any, page_dir: Path, show_code: bool) -> Any:
    """The page's notebook: parameter cells out, the parameters table in (last), paths
    relative to ``page_dir``; without code also no stderr chatter (warnings), which
    only a programmer can act on."""
    import nbformat

    rows = [(n, _relative_value(v, page_dir), s) for n, v, s in page_parameters(nb)]
    cells = []
    for cell in nb.cells:
        if set(cell.metadata.get("tags", [])) & set(PARAM_TAGS):
            continue
        if cell.cell_type == "code":
            outs = [o for o in cell.get("outputs", []) if show_code or not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
            cell.outputs = [nbformat.from_dict(_clean(dict(o), page_dir)) for o in outs]
            cell.source = relative_paths(cell.source, page_dir)
        elif cell.cell_type == "markdown":
            cell.source = relative_paths(cell.source, page_dir)
        cells.append(cell)
    table = parameters_html(rows)
    if table:
        # An output, not a raw cell: nbconvert passes raw HTML through its cleaner, which
        # drops headings and table heads.
        cell = nbformat.v4.new_code_cell("", metadata={"tags": [PAGE_ONLY_TAG]})
        cell.outputs = [nbformat.v4.new_output("display_data", {"text/html": table, "text/plain": "parameters"})]
        cells.append(cell)
    nb.cells = cells
    return nb
