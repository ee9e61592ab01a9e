"""Run the parameterized notebooks (papermill) and render them to self-contained HTML (nbconvert).

A notebook that fails still leaves its executed .ipynb (papermill writes the cells
run so far, with the error) and an HTML page showing the error; the caller marks it
failed and carries on with the others.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qatlab.atomic import atomic_path, write_text

NOTEBOOKS = ("quantizers", "qat_vs_ptq", "hardware", "kernels")
KERNEL = "qatlab"  # registered by `make setup` (ipykernel install --sys-prefix --name qatlab)
TEMPLATES = Path(__file__).resolve().parent / "templates"
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I)


def notebook_dir() -> Path:
    """The repository's notebooks/ folder (beside the workbook package)."""
    return Path(os.environ.get("QATLAB_NOTEBOOKS") or Path(__file__).resolve().parent.parent / "notebooks")


@dataclass
class NotebookResult:
    name: str
    status: str  # ok | failed
    ipynb: Path
    html: Path | None = None
    error: str | None = None
    seconds: float = 0.0


def kernel_name() -> str:
    """The project's kernel where registered, else the running Python's own."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def execute(name: str, out_dir: str | os.PathLike[str], parameters: dict[str, Any], timeout_s: int | None = 1800) -> NotebookResult:
    """Execute ``notebooks/<name>.ipynb`` with ``parameters`` into ``out_dir/<name>.ipynb``."""
    import time

    import papermill as pm

    src = notebook_dir() / f"{name}.ipynb"
    if not src.exists():
        raise FileNotFoundError(f"notebook {src} does not exist")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dst = out / f"{name}.ipynb"
    t0 = time.perf_counter()
    status, error = "ok", None
    try:
        # papermill writes the notebook as it runs, so a failed one keeps its error cell.
        with atomic_path(dst, mkdir=False) as tmp:
            try:
                pm.execute_notebook(
                    str(src), str(tmp), parameters=parameters, kernel_name=kernel_name(),
                    progress_bar=False, cwd=str(out), execution_timeout=timeout_s,
                )  # fmt: skip
            except pm.PapermillExecutionError as e:
                status, error = "failed", f"{e.ename}: {e.evalue}"
            if tmp.stat().st_size == 0:
                raise RuntimeError("papermill wrote no notebook")
    except Exception as e:  # kernel death, timeout, bad parameters: still a failed notebook, not a dead run
        status, error = "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    return NotebookResult(name, status, dst, error=error, seconds=round(time.perf_counter() - t0, 2))


def render_html(ipynb: str | os.PathLike[str], html: str | os.PathLike[str] | None = None, no_input: bool = False) -> Path:
    """Self-contained HTML of an executed notebook (images inline, nothing from the network)."""
    import nbformat
    from nbconvert import HTMLExporter

    src = Path(ipynb)
    dst = Path(html) if html else src.with_suffix(".html")
    nb = nbformat.read(src, as_version=4)
    exporter = HTMLExporter(
        template_name="qatlab_html", extra_template_basedirs=[str(TEMPLATES)], exclude_input=no_input, embed_images=True
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": src.stem}})
    if EXTERNAL.search(body):
        raise RuntimeError(f"{dst}: rendered HTML still references the network: {EXTERNAL.search(body).group(0)}")
    write_text(dst, body, mkdir=False)
    return dst


def run_notebooks(
    out_dir: str | os.PathLike[str],
    parameters: dict[str, dict[str, Any]],
    names: tuple[str, ...] = NOTEBOOKS,
    no_input: bool = False,
    progress: bool = True,
) -> list[NotebookResult]:
    """Execute and render each notebook; failures are recorded, never raised."""
    from tqdm import tqdm

    results = []
    bar = tqdm(names, desc="notebooks", unit="nb", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        r = execute(name, out_dir, parameters.get(name, {}))
        try:
            r.html = render_html(r.ipynb, no_input=no_input)
        except Exception as e:
            r.status = "failed"
            r.error = (r.error + "\n" if r.error else "") + f"HTML rendering failed: {type(e).__name__}: {e}"
        results.append(r)
    return results
