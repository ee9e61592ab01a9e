"""A report page as a reader gets it, from an executed notebook (no kernel needed):
findings first, no code or prompts unless asked, parameters once, no absolute path;
and the index of runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from workbook.cli import build_parser
from workbook.report import INDEX_MARKER, build_index
from workbook.studies.display import Findings, Table

FINDINGS = Findings(["W4A4 uses 53 % of W8A8's ASIC energy"])


def _executed(run_dir: Path) -> Path:
    """What papermill leaves: defaults cell, injected cell (an absolute path), outputs."""
    sweep = str(run_dir / "sweep")
    cells = [
        new_markdown_cell("# Hardware cost\n\nIntro."),
        new_code_cell('run_dir = None\nfpga_device = "ZCU104"', metadata={"tags": ["parameters"]}),
        new_code_cell(f'# Parameters\nrun_dir = "{sweep}"\n', metadata={"tags": ["injected-parameters"]}),
        new_code_cell("table = compute(run_dir)", execution_count=3),
        new_code_cell("Findings(...)", execution_count=4),
        new_code_cell("cost_view(costs)", execution_count=5),
    ]
    cells[3].outputs = [new_output("stream", name="stderr", text="UserWarning: noise\n")]
    cells[4].outputs = [new_output("execute_result", {"text/html": FINDINGS._repr_html_(), "text/plain": "f"}, execution_count=4)]
    import pandas as pd

    wide = Table(pd.DataFrame([{f"col{i}": i for i in range(33)}]), key=["col0", "col1"], caption=f"read from {sweep}")
    cells[5].outputs = [new_output("execute_result", {"text/html": wide._repr_html_(), "text/plain": "t"}, execution_count=5)]
    nb = new_notebook(cells=cells)
    nb.metadata["papermill"] = {"parameters": {"run_dir": sweep}}
    run_dir.mkdir(parents=True, exist_ok=True)
    p = run_dir / "hardware.ipynb"
    nbformat.write(nb, p)
    return p


def test_page_opens_with_findings_and_hides_code(tmp_path: Path) -> None:
    from workbook.notebooks import render_html

    page = render_html(_executed(tmp_path / "run1")).read_text()
    body = page[page.index("<body") :]
    text = re.sub(r"<[^>]+>", " ", body)
    assert body.index("key-findings") < body.index("col0") < body.index("run-parameters")  # findings, detail, parameters
    assert "compute(run_dir)" not in page and "Findings(...)" not in page  # no code
    assert not re.search(r"(In|Out)\s*\[\s*\d*\s*\]", text)  # no prompts
    assert "UserWarning" not in page
    assert "fpga_device" in page and page.count("run_dir") == 1  # parameters once, in the table
    assert str(tmp_path) not in page and "'sweep'" in page  # relative to the page
    assert "Full table (33 columns)" in page
    assert re.search(r"<title>Hardware cost</title>", page)


def test_show_code_brings_the_code_back(tmp_path: Path) -> None:
    from workbook.notebooks import render_html

    page = render_html(_executed(tmp_path / "run1"), no_input=False).read_text()
    assert "compute" in page and "UserWarning" in page
    assert "# Parameters" not in page  # papermill's two parameter cells still do not both show
    assert str(tmp_path) not in page


@pytest.mark.parametrize("command", ["run", "report"])
def test_code_is_hidden_by_default_and_show_code_shows_it(command: str) -> None:
    p = build_parser()
    assert p.parse_args([command]).no_input is True
    assert p.parse_args([command, "--show-code"]).no_input is False


def _manifest(folder: Path, **kw: object) -> None:
    folder.mkdir(parents=True)
    m = {
        "run_id": folder.name,
        "date": "2026-12-06T13:13:32",
        "spec": "digits-smoke",
        "params": ["epochs=1", "fpga_device=PYNQ-Z1"],
        "status": "ok",
        "headline": {"trials": 4, "ok": 4, "failed": 0, "fp32_acc": 82.45, "best_w8_acc": 86.91, "best_w4_acc": 85.2},
        "notebooks": [{"name": "hardware", "status": "ok", "html": str(folder / "hardware.html")}],
        **kw,
    }
    (folder / "run.json").write_text(json.dumps(m))


def test_index_has_columns_with_units_and_encoded_links(tmp_path: Path) -> None:
    _manifest(tmp_path / "run#1 50%")
    _manifest(tmp_path / "older", date="2026-01-01T00:00:00", status="failed", headline={"fp32_acc": 80.0})
    page = build_index(tmp_path).read_text()
    assert INDEX_MARKER in page
    assert 'href="run%231%2050%25/hardware.html"' in page
    for col in ("date", "spec", "parameters (-p)", "status", "FP32 (%)", "best W8 (%)", "best W4 (%)"):
        assert f"<th>{col}</th>" in page
    assert "<code>fpga_device=PYNQ-Z1</code>" in page and "2026-12-06 13:13" in page
    assert '<td class="num">86.91</td>' in page and "best_w8_acc" not in page  # numbers, not a raw string
    assert page.index("run#1 50%") < page.index("older")  # newest first


def test_index_link_resolves_to_the_page(tmp_path: Path) -> None:
    from urllib.parse import unquote

    folder = tmp_path / "run#1 50%"
    _manifest(folder)
    (folder / "hardware.html").write_text("<html></html>")
    page = build_index(tmp_path).read_text()
    (href,) = re.findall(r'href="([^"]+)"', page)
    assert (tmp_path / unquote(href)).exists()


@pytest.mark.slow  # executes the hardware notebook
def test_a_failing_section_leaves_the_rest_of_the_page(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from qatlab.atomic import write_bytes
    from tests.hw.asic.test_cli import write_checkpoint, write_intmodel
    from workbook.notebooks import execute, render_html
    from workbook.results import PARQUET_FILE, records_to_parquet_bytes

    sweep = tmp_path / "sweep"
    trial = sweep / "trials" / "t1"
    trial.mkdir(parents=True)
    write_intmodel(write_checkpoint(trial))
    rec = {"trial_id": "t1", "status": "ok", "method": "ptq", "ste": "clipped", "w_bits": 8, "a_bits": 8,
           "granularity": "channel", "test_acc": 0.5, "int_acc": 0.5, "seed": 0}  # fmt: skip
    write_bytes(sweep / PARQUET_FILE, records_to_parquet_bytes([rec]))
    # An unknown FPGA: its figure and table fail, with the reason; everything else renders.
    r = execute("hardware", tmp_path, {"run_dir": str(sweep), "fpga_device": "PYNQ-Z9"})
    assert r.status == "ok", r.error
    page = render_html(r.ipynb).read_text()
    assert page.count('class="key-findings"') == 1 and "PYNQ-Z9" in page
    assert "the FPGA resource figure could not be shown" in page and "ASIC, per layer" in page
    assert "accuracy against ASIC cost" in page  # the Pareto figure (its alt text)
    assert str(tmp_path) not in page
    assert "IPKernelApp" not in capfd.readouterr().err  # the kernel's start-up warnings stay out of the output


def test_paths_under_the_page_become_relative(tmp_path: Path) -> None:
    from urllib.parse import quote

    from workbook.pages import REPO, relative_paths

    page_dir = tmp_path / "run#1 50%"
    text = f"read {page_dir}/sweep/results.parquet, link {quote(str(page_dir))}/x.html, code {REPO}/workbook/a.py, here {page_dir}"
    out = relative_paths(text, page_dir)
    assert out == "read sweep/results.parquet, link x.html, code <qatlab>/workbook/a.py, here ."
