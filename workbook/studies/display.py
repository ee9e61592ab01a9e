"""How the reports show numbers, tables, findings and a section that failed.

One rule per quantity: accuracies in % with 2 decimals (``± std`` only over two or more
seeds), everything else to 3 significant digits. Wide tables show their key columns
and keep the full table behind a ``<details>`` element, so no page outgrows the screen.
"""

from __future__ import annotations

import html
import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

ACC_DECIMALS = 2


def sig3(x: Any) -> str:
    """A number to 3 significant digits, without exponent between 1e-3 and 1e9.

    Integers below 1000 are exact counts and stay as they are; inf and NaN read
    "∞"/"−∞" and "–" (no value), never Python's ``inf``/``nan``.
    """
    if x is None or isinstance(x, str):
        return "–" if x is None else x
    if isinstance(x, (bool,)):
        return "yes" if x else "no"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v == 0:
        return "0"
    if float(v).is_integer() and abs(v) < 1000:
        return str(int(v))
    r = float(f"{v:.3g}")  # rounded first: 0.99999 is 1.00, not 1.000
    e = math.floor(math.log10(abs(r)))
    if e >= 9 or e < -3:
        return f"{r:.2e}"
    if e >= 2:
        return f"{r:,.0f}"
    return f"{r:.{2 - e}f}"


def pct(x: Any, decimals: int = ACC_DECIMALS) -> str:
    """An accuracy (already in %) with ``decimals`` decimals; "–" where there is none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{float(x):.{decimals}f}"


def pct_pm(mean: float, std: float | None, seeds: int) -> str:
    """``mean ± std`` (both in %) over two or more seeds; the plain mean for one seed."""
    if seeds >= 2 and std is not None and not math.isnan(std):
        return f"{pct(mean)} ± {pct(std)}"
    return pct(mean)


def format_frame(df: pd.DataFrame, percent: Iterable[str] = (), keep: Iterable[str] = ()) -> pd.DataFrame:
    """Every cell as text: ``percent`` columns (values in %) with 2 decimals, ``keep``
    columns as they are, the other numbers to 3 significant digits."""
    percent, keep = set(percent), set(keep)
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        if c in keep:
            out[c] = df[c].map(lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        elif c in percent:
            out[c] = df[c].map(pct)
        else:
            out[c] = df[c].map(sig3)
    return out


def _table_html(df: pd.DataFrame) -> str:
    body = df.to_html(index=False, escape=True, border=0, classes="qatlab-table", na_rep="–")
    return f'<div class="table-wrap">{body}</div>'


@dataclass
class Table:
    """A formatted table: the ``key`` columns up front, the rest behind ``<details>``."""

    frame: pd.DataFrame
    key: Sequence[str] | None = None
    caption: str = ""
    empty: str = "nothing to show"

    def _repr_html_(self) -> str:
        cap = f'<p class="caption">{html.escape(self.caption)}</p>' if self.caption else ""
        if self.frame.empty:
            return f'{cap}<p class="empty">{html.escape(self.empty)}</p>'
        key = [c for c in (self.key or []) if c in self.frame.columns]
        if not key or len(key) == len(self.frame.columns):
            return cap + _table_html(self.frame)
        n = len(self.frame.columns)
        return (
            cap + _table_html(self.frame[key]) + f"<details><summary>Full table ({n} columns)</summary>{_table_html(self.frame)}</details>"
        )

    def __repr__(self) -> str:  # the text view (a terminal, a diff of the notebook)
        return (self.caption + "\n" if self.caption else "") + (self.frame.to_string(index=False) if not self.frame.empty else self.empty)


@dataclass
class Findings:
    """The box a report opens with: a few sentences with this run's numbers."""

    items: list[str] = field(default_factory=list)
    title: str = "Key findings"

    def _repr_html_(self) -> str:
        lis = "".join(f"<li>{html.escape(s)}</li>" for s in self.items) or "<li>nothing to report: the run has no usable results</li>"
        return f'<div class="key-findings" role="note"><h2>{html.escape(self.title)}</h2><ul>{lis}</ul></div>'

    def __repr__(self) -> str:
        return "\n".join([self.title + ":", *(f"- {s}" for s in self.items)])


@dataclass
class Note:
    """A short remark shown beside a figure or table (what was left out, and why)."""

    text: str

    def _repr_html_(self) -> str:
        return f'<p class="note">{html.escape(self.text)}</p>'

    def __repr__(self) -> str:
        return self.text


@dataclass
class SectionError:
    """What a section shows instead of its figure or table when it fails."""

    what: str
    error: str

    def _repr_html_(self) -> str:
        return f'<div class="section-error"><strong>{html.escape(self.what)} could not be shown:</strong> {html.escape(self.error)}</div>'

    def __repr__(self) -> str:
        return f"{self.what} could not be shown: {self.error}"


@dataclass
class FigureImage:
    """A matplotlib figure as an inline PNG (the figure itself is closed, so the
    notebook's inline backend does not show it a second time)."""

    png: bytes
    alt: str = "figure"

    @classmethod
    def of(cls, fig: Any) -> "FigureImage":
        import io

        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        titles = [ax.get_title() for ax in fig.get_axes() if ax.get_title()]
        plt.close(fig)
        return cls(buf.getvalue(), "; ".join(titles) or "figure")

    def _repr_html_(self) -> str:
        import base64

        data = base64.b64encode(self.png).decode("ascii")
        return f'<figure class="qatlab-figure"><img src="data:image/png;base64,{data}" alt="{html.escape(self.alt)}"></figure>'

    def __repr__(self) -> str:
        return f"<figure: {self.alt}>"


@dataclass
class Group:
    """Several things shown as one output, in order (None items are skipped)."""

    items: list[Any]

    def _repr_html_(self) -> str:
        return "".join(to_html(i) for i in self.items if i is not None)

    def __repr__(self) -> str:
        return "\n".join(repr(i) for i in self.items if i is not None)


def to_html(item: Any) -> str:
    if isinstance(item, str):
        return f"<p>{html.escape(item)}</p>"
    if _is_figure(item):
        item = FigureImage.of(item)
    if hasattr(item, "_repr_html_"):
        return item._repr_html_()
    return f"<pre>{html.escape(repr(item))}</pre>"


@dataclass
class Heading:
    text: str
    level: int = 2

    def _repr_html_(self) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"

    def __repr__(self) -> str:
        return self.text


def _is_figure(x: Any) -> bool:
    return type(x).__name__ == "Figure" and type(x).__module__.startswith("matplotlib")


def section(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` (a figure as :class:`FigureImage`), or a
    :class:`SectionError` saying why not: one failed figure or table is a note on the
    page, and the cells after it still run."""
    try:
        out = fn(*args, **kwargs)
        return FigureImage.of(out) if _is_figure(out) else out
    except Exception as e:
        import matplotlib.pyplot as plt

        plt.close("all")  # a half-drawn figure is not shown
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return SectionError(what, last)
