"""Report pages in a real browser (headless Chromium): the Key findings box is there and
no page is wider than 1400 px. Skips where Debian's chromium is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

MAX_WIDTH = 1400
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")

# Runs after layout and images: the page's own width, written where --dump-dom sees it.
PROBE = (
    "<script>window.addEventListener('load', function () {"
    "var d = document.createElement('div'); d.id = 'qatlab-probe';"
    "d.textContent = 'width=' + document.documentElement.scrollWidth + ';findings=' + document.querySelectorAll('.key-findings').length;"
    "document.body.appendChild(d); });</script>"
)


def page_probe(page: Path, tmp: Path, window: tuple[int, int] = (1280, 900)) -> tuple[int, int]:
    """(scroll width in px, number of Key findings boxes) of ``page`` as Chromium lays it out."""
    copy = tmp / f"probe-{page.name}"
    text = page.read_text(encoding="utf-8")
    copy.write_text(text.replace("</body>", PROBE + "</body>") if "</body>" in text else text + PROBE, encoding="utf-8")
    p = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'profile'}", f"--window-size={window[0]},{window[1]}",
         "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r"width=(\d+);findings=(\d+)", p.stdout)
    assert m, f"the probe did not run in {page.name}: {p.stdout[-500:]}"
    return int(m.group(1)), int(m.group(2))


def test_rendered_page_has_findings_and_fits_the_screen(tmp_path: Path) -> None:
    from tests.workbook.test_report_pages import _executed
    from workbook.notebooks import render_html

    page = render_html(_executed(tmp_path / "run1"))
    width, findings = page_probe(page, tmp_path)
    assert findings == 1 and width <= MAX_WIDTH


def test_probe_sees_a_page_that_is_too_wide(tmp_path: Path) -> None:
    wide = tmp_path / "wide.html"
    wide.write_text('<!DOCTYPE html><html><body><div style="width:3000px">x</div></body></html>')
    width, findings = page_probe(wide, tmp_path)
    assert width > MAX_WIDTH and findings == 0  # the check can fail


def test_index_fits_the_screen(tmp_path: Path) -> None:
    from tests.workbook.test_report_pages import _manifest
    from workbook.report import build_index

    _manifest(tmp_path / "run#1 50%", params=[f"p{i}=" + "x" * 40 for i in range(12)])
    width, _ = page_probe(build_index(tmp_path), tmp_path)
    assert width <= MAX_WIDTH


@pytest.mark.slow  # executes every notebook on a tiny sweep
def test_every_page_of_a_small_run(run_dir_small: Path, tmp_path: Path) -> None:
    for name in ("quantizers", "qat_vs_ptq", "hardware", "kernels"):
        width, findings = page_probe(run_dir_small / f"{name}.html", tmp_path)
        assert findings == 1 and width <= MAX_WIDTH, name
    from workbook.report import build_index

    width, _ = page_probe(build_index(run_dir_small.parent), tmp_path)  # a run outside reports/ writes no index itself
    assert width <= MAX_WIDTH


@pytest.fixture(scope="module")
def run_dir_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workbook.cli import main

    root = tmp_path_factory.mktemp("reports")
    mp = pytest.MonkeyPatch()
    mp.setenv("QATLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    tiny = [
        "-p",
        "epochs=1",
        "-p",
        "n_images=16",
        "-p",
        "max_act_values=2000",
        "-p",
        "mse_grid=8",
        "-p",
        "sizes=[32, 64]",
        "-p",
        "repeats=1",
    ]
    try:
        assert main(["run", "--spec", "digits-smoke", "--out", str(root / "run#1 50%"), *tiny]) == 0
    finally:
        mp.undo()
    return root / "run#1 50%"
