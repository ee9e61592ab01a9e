"""Run the parameterized notebooks (papermill) and render them to self-contained HTML (nbconvert).

A notebook that fails still leaves its executed .ipynb (papermill writes the cells
run so far, with the error) and an HTML page showing the error; the caller marks it
failed and carries on with the others.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from qatlab.atomic import atomic_path, write_text

NOTEBOOKS = ("quantizers", "qat_vs_ptq", "hardware", "kernels")
KERNEL = "qatlab"  # registered by `make setup` (ipykernel install --sys-prefix --name qatlab)
TEMPLATES = Path(__file__).resolve().parent / "templates"
# The kernel's own start-up warnings (e.g. TCP without encryption: the kernel listens on
# localhost for this one run) are not the run's output.
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]
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
    """Execute ``notebooks/<name>.ipynb`` with ``parameters`` into ``out_dir/<name>.ipynb``.

    papermill runs in a worker thread while this thread waits: nbclient takes over
    SIGINT in the main thread (and only there) to shut its kernel down and carry on,
    so Ctrl-C would end the notebook, not the run. Here Ctrl-C raises
    KeyboardInterrupt as usual; the kernel is killed, the worker ends with it, and its
    temp file goes (atomic write) before the interrupt goes on up.
    """
    import threading
    import time

    from jupyter_client.manager import AsyncKernelManager

    src = notebook_dir() / f"{name}.ipynb"
    if not src.exists():
        raise FileNotFoundError(f"notebook {src} does not exist")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Absolute: papermill changes the process's working directory (cwd=) while it runs.
    dst = (out / f"{name}.ipynb").resolve()
    t0 = time.perf_counter()
    km = AsyncKernelManager(kernel_name=kernel_name())
    outcome: dict[str, Any] = {"status": "ok", "error": None}
    # An Event, not Thread.join: a join that Ctrl-C interrupted can report a live thread as ended.
    done = threading.Event()
    worker = threading.Thread(target=_papermill, args=(src.resolve(), dst, parameters, timeout_s, km, outcome, done),
                              name=f"notebook-{name}", daemon=True)  # fmt: skip
    worker.start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        # The worker ends with its kernel: its temp file is removed and the working directory
        # restored. A Ctrl-C as the notebook starts finds no kernel process yet, and one killed
        # only now would leave the worker to start it and run the notebook: so the kernel is
        # killed again until the worker has ended (a kernel dying while it starts ends it).
        deadline = time.monotonic() + 60
        while True:
            _kill_kernel(km)
            if done.wait(0.2) or time.monotonic() > deadline:
                break
        raise
    if outcome.get("interrupted"):
        raise KeyboardInterrupt
    return NotebookResult(name, outcome["status"], dst, error=outcome["error"], seconds=round(time.perf_counter() - t0, 2))


def _papermill(src: Path, dst: Path, parameters: dict[str, Any], timeout_s: int | None, km: Any, outcome: dict[str, Any],
               done: Any) -> None:  # fmt: skip
    """The worker thread: papermill into a temp file beside ``dst``; ``outcome`` gets the status and error."""
    import papermill as pm

    out = dst.parent
    try:
        # papermill writes the notebook as it runs, so a failed one keeps its error cell.
        with atomic_path(dst, mkdir=False) as tmp:
            try:
                # The kernel machinery's warnings are not the run's output (QUIET_KERNEL quiets the kernel's log).
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pm.execute_notebook(
                        str(src), str(tmp), parameters=parameters, kernel_name=km.kernel_name, km=km,
                        extra_arguments=QUIET_KERNEL, progress_bar=False, cwd=str(out), execution_timeout=timeout_s,
                    )  # fmt: skip
            except pm.PapermillExecutionError as e:
                if e.ename == "KeyboardInterrupt":  # the kernel was interrupted: the run stops, not just this notebook
                    outcome["interrupted"] = True
                    raise KeyboardInterrupt from None
                outcome.update(status="failed", error=f"{e.ename}: {e.evalue}")
            if tmp.stat().st_size == 0:
                raise RuntimeError("papermill wrote no notebook")
    except KeyboardInterrupt:
        outcome["interrupted"] = True
    except Exception as e:  # kernel death, timeout, bad parameters: still a failed notebook, not a dead run
        outcome.update(status="failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    finally:
        _kill_kernel(km)  # papermill shuts it down when it owns it; this one is ours
        done.set()


def _kill_kernel(km: Any) -> None:
    """Kill the kernel's process group (it runs in a session of its own), if it runs."""
    import signal

    pgid = getattr(getattr(km, "provisioner", None), "pgid", None)
    if pgid:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


def render_html(ipynb: str | os.PathLike[str], html: str | os.PathLike[str] | None = None, no_input: bool = True) -> Path:
    """Self-contained HTML of an executed notebook (images inline, nothing from the network).

    The page (:func:`workbook.pages.prepare`) shows the run's parameters once, in a
    table at its end, and no absolute path; ``no_input`` hides the code and the
    In/Out prompts (the default: a report is read, not programmed).
    """
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    from workbook.pages import PAGE_ONLY_TAG, prepare

    src = Path(ipynb)
    dst = Path(html) if html else src.with_suffix(".html")
    nb = prepare(nbformat.read(src, as_version=4), dst.parent, show_code=not no_input)
    exporter = HTMLExporter(
        config=Config({"TagRemovePreprocessor": {"remove_input_tags": [PAGE_ONLY_TAG]}}),
        template_name="qatlab_html",
        extra_template_basedirs=[str(TEMPLATES)],
        exclude_input=no_input,
        exclude_input_prompt=no_input,
        exclude_output_prompt=no_input,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": _title(nb, src.stem)}})
    if EXTERNAL.search(body):
        raise RuntimeError(f"{dst}: rendered HTML still references the network: {EXTERNAL.search(body).group(0)}")
    write_text(dst, body, mkdir=False)
    return dst


def _title(nb: Any, fallback: str) -> str:
    """The page title: the notebook's first heading."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def run_notebooks(
    out_dir: str | os.PathLike[str],
    parameters: dict[str, dict[str, Any]],
    names: tuple[str, ...] = NOTEBOOKS,
    no_input: bool = False,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
) -> list[NotebookResult]:
    """Execute and render each notebook; failures are recorded, never raised.

    Ctrl-C is not a failure: KeyboardInterrupt goes through, and so does ``stop()``
    turning true (an interrupt the kernel or papermill swallowed), checked after
    each notebook. The notebook interrupted leaves no file behind (atomic writes).
    """
    from tqdm import tqdm

    results = []
    bar = tqdm(names, desc="notebooks", unit="nb", disable=not (progress and sys.stderr.isatty()))  # a bar only on a terminal
    for name in bar:
        bar.set_postfix_str(name)
        r = execute(name, out_dir, parameters.get(name, {}))
        if stop is not None and stop():
            raise KeyboardInterrupt
        try:
            r.html = render_html(r.ipynb, no_input=no_input)
        except Exception as e:
            r.status = "failed"
            r.error = (r.error + "\n" if r.error else "") + f"HTML rendering failed: {type(e).__name__}: {e}"
        results.append(r)
    return results
