"""End to end: `workbook run` on a tiny spec, the reports it leaves, and a browser's view of them."""

import json
import re
import shutil
import subprocess

import nbformat
import pytest

from workbook.cli import main
from workbook.notebooks import NOTEBOOKS, notebook_dir, run_notebooks
from workbook.report import build_index

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I)
TINY = ["-p", "epochs=1", "-p", "n_images=16", "-p", "max_act_values=2000", "-p", "mse_grid=8", "-p", "sizes=[64, 128]", "-p", "repeats=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("QATLAB_CACHE", str(cache))
    # reports/ under the working directory is the reports root: the one place `run` writes an index unasked
    mp.chdir(work)
    try:
        rc = main(["run", "--spec", "digits-smoke", "--out", "reports/run1", *TINY])
    finally:
        mp.undo()
    assert rc == 0
    return work / "reports" / "run1"


@pytest.mark.slow
def test_run_leaves_reports_and_index(run_dir):
    m = json.loads((run_dir / "run.json").read_text())
    assert m["status"] == "ok" and m["sweep"]["ok"] == 4
    assert [nb["name"] for nb in m["notebooks"]] == list(NOTEBOOKS)
    assert m["headline"]["fp32_acc"] > 80
    assert (run_dir / "sweep" / "results.parquet").exists()
    for name in NOTEBOOKS:
        page = (run_dir / f"{name}.html").read_text()
        assert "<table" in page, name
        assert "data:image/png;base64" in page, name  # figures inline
        assert not EXTERNAL.search(page), name  # nothing from the network
    index = (run_dir.parent / "index.html").read_text()
    assert "run1" in index and "quantizers</a>" in index and not EXTERNAL.search(index)


@pytest.mark.slow
def test_report_rerenders_without_running(run_dir, capsys):
    (run_dir / "kernels.html").unlink()
    assert main(["report", str(run_dir), "--no-input"]) == 0
    page = (run_dir / "kernels.html").read_text()
    assert "cpu_gemm_table" not in page  # code hidden
    assert "data:image/png;base64" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (the Makefile installs it where apt is available)")
def test_pages_render_in_headless_chromium(run_dir, tmp_path):
    for page in (run_dir.parent / "index.html", run_dir / "qat_vs_ptq.html"):
        p = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr[-2000:]
        dom = p.stdout
        assert re.search(r"<title>[^<]+</title>", dom), page
        assert "<table" in dom
        if page.name != "index.html":
            assert "<img" in dom
        console_errors = [line for line in p.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
        assert not console_errors, console_errors


@pytest.mark.slow  # starts a notebook kernel
def test_failing_notebook_still_renders_and_is_marked(tmp_path, monkeypatch):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(notebook_dir() / f"{name}.ipynb", nbs)
    nb = nbformat.read(nbs / "kernels.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("raise RuntimeError('forced failure for the test')"))
    nbformat.write(nb, nbs / "kernels.ipynb")
    monkeypatch.setenv("QATLAB_NOTEBOOKS", str(nbs))
    out = tmp_path / "run"
    results = run_notebooks(out, {"kernels": {"sizes": [32], "repeats": 1}}, names=("kernels",), progress=False)
    (r,) = results
    assert r.status == "failed" and "forced failure" in r.error
    page = r.html.read_text()
    assert "forced failure for the test" in page  # the error is visible in the report
    (out / "run.json").write_text(
        json.dumps(
            {
                "run_id": "run",
                "date": "2026-01-01",
                "status": "failed",
                "notebooks": [{"name": "kernels", "status": "failed", "html": str(r.html)}],
            }
        )
    )
    index = build_index(tmp_path).read_text()
    assert "(failed)" in index


def test_notebooks_are_committed_clean():
    for name in NOTEBOOKS:
        nb = nbformat.read(notebook_dir() / f"{name}.ipynb", as_version=4)
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), name
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, name
