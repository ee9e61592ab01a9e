"""How reports show numbers and tables: one rule per quantity, wide tables folded."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbook.studies import display


def _sig3_reference(x: float) -> float:
    """3 significant digits, by string formatting (the plain way)."""
    return float(f"{x:.3g}")


@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False).filter(lambda v: v == 0 or abs(v) >= 1e-6))
def test_sig3_matches_three_significant_digits(x: float) -> None:
    s = display.sig3(x)
    if x == 0:
        assert s == "0"
        return
    if float(x).is_integer() and abs(x) < 1000:
        assert s == str(int(x))
        return
    got = float(s.replace(",", ""))
    assert got == pytest.approx(_sig3_reference(x), rel=1e-9, abs=1e-12)
    mantissa = s.replace(",", "").replace("-", "").split("e")[0]
    digits = mantissa.replace(".", "").lstrip("0") if "." in mantissa else mantissa.rstrip("0")
    assert len(digits) <= 3, s  # no spurious precision


@pytest.mark.parametrize(
    "x,want",
    [(18.292873, "18.3"), (0.032945, "0.0329"), (5649, "5,650"), (330033.0033, "330,000"), (8, "8"), (1.5e-7, "1.50e-07")],
)
def test_sig3_examples(x: float, want: str) -> None:
    assert display.sig3(x) == want


def test_special_values_are_words_not_python() -> None:
    assert display.sig3(math.inf) == "∞" and display.sig3(-math.inf) == "−∞" and display.sig3(math.nan) == "–"
    assert display.sig3(True) == "yes" and display.pct(math.nan) == "–"


def test_plus_minus_only_over_two_or_more_seeds() -> None:
    assert display.pct_pm(86.912, 1.0, 2) == "86.91 ± 1.00"
    assert display.pct_pm(86.912, 0.0, 1) == "86.91"
    assert display.pct_pm(86.912, math.nan, 3) == "86.91"


def test_wide_table_shows_key_columns_and_folds_the_rest() -> None:
    df = pd.DataFrame([{f"c{i}": i for i in range(30)}])
    page = display.Table(df, key=["c0", "c1"])._repr_html_()
    head, _, folded = page.partition("<details>")
    assert "c0" in head and "c29" not in head
    assert "<summary>Full table (30 columns)</summary>" in folded and "c29" in folded
    assert "<details>" not in display.Table(df[["c0", "c1"]], key=["c0", "c1"])._repr_html_()


def test_format_frame_gives_accuracies_two_decimals_and_the_rest_three_digits() -> None:
    df = pd.DataFrame({"acc": [86.9081, 100.0], "energy": [18.292873, 9.573931], "name": ["a", "b"]})
    f = display.format_frame(df, percent=["acc"], keep=["name"])
    assert f.acc.tolist() == ["86.91", "100.00"] and f.energy.tolist() == ["18.3", "9.57"] and f.name.tolist() == ["a", "b"]


def test_findings_box_escapes_and_has_its_class() -> None:
    box = display.Findings(["W4A4 uses 52 % of W8A8's <ASIC> energy"])._repr_html_()
    assert 'class="key-findings"' in box and "&lt;ASIC&gt;" in box and "<h2>Key findings</h2>" in box


def test_section_turns_a_failure_into_a_note() -> None:
    def boom() -> None:
        raise ValueError("needs 114 % of PYNQ-Z1's BRAM18")

    out = display.section("the FPGA figure", boom)
    assert isinstance(out, display.SectionError) and "ValueError: needs 114 %" in out._repr_html_()
    assert display.section("fine", lambda: 3) == 3


def test_section_turns_a_figure_into_an_inline_image() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def fig() -> object:
        f, ax = plt.subplots()
        ax.set_title("t")
        return f

    out = display.section("fig", fig)
    assert isinstance(out, display.FigureImage) and out.png.startswith(b"\x89PNG") and 'alt="t"' in out._repr_html_()
    assert not plt.get_fignums()  # closed: the inline backend will not show it twice
