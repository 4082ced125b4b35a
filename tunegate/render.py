"""Rendering shared by every report: Markdown tables for Prefect artifacts and `summary.md`, and
the pieces of the self-contained HTML pages (quality, eval, trends): one stylesheet, escaping,
tables, inline charts, the page itself. A page has no scripts and loads nothing, so it opens
from a CI artifact or a mail attachment as it is.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any, NamedTuple

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#1d2330;
  padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:30px;border-bottom:1px solid #dde;
  padding-bottom:4px}h3{font-size:15px;margin:22px 0 6px}h4{font-size:14px;margin:12px 0 4px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #dde;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f5f9}td.n{text-align:right;font-variant-numeric:tabular-nums}
td ul{margin:0;padding-left:1.1rem}tr.flag{background:#fff4cc}
.ok,.promoted{color:#17803d;font-weight:600}.bad,.refused,.failed{color:#b42318;font-weight:600}
.fail{color:#b42318}.muted{color:#667}.warn{color:#9a6700;font-weight:600}
.banner{padding:10px 14px;border-radius:6px;font-size:16px;margin:10px 0}
.banner.ok{background:#e7f6ec;border:1px solid #17803d}
.banner.bad{background:#fdecea;border:1px solid #b42318}
.pair{display:grid;grid-auto-flow:column;grid-auto-columns:1fr;gap:10px;margin:8px 0 16px}
.card{border:1px solid #dde;border-radius:6px;padding:8px;background:#fbfcfe;overflow:hidden}
.msg{margin:4px 0;white-space:pre-wrap;word-break:break-word}.role{font-weight:600;color:#345}
mark{background:#ffe58a;padding:0 1px}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f7f9;padding:6px;margin:4px 0;
  max-height:180px;overflow:auto}
img{max-width:100%}.summary td{border:none;padding:2px 12px 2px 0}
"""


class Cell(NamedTuple):
    """A table cell with its own class (a gate's outcome colour)."""

    html: str
    css: str


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def escape(value: object) -> str:
    """Any value as HTML text: rows and answers are data, never markup."""
    return html.escape(str(value))


def clip(text: str, n: int) -> str:
    """At most `n` characters, saying how many were left out."""
    return text if len(text) <= n else text[:n] + f" … [{len(text) - n} more characters]"


def html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    numeric: Sequence[int] = (),
    row_css: Sequence[str] | None = None,
) -> str:
    """A table of HTML cells (the caller escapes data); `numeric` columns align right, a `Cell`
    brings its class, `row_css` gives each row one (empty: none)."""

    def td(i: int, v: Any) -> str:
        if isinstance(v, Cell):
            return f"<td class={v.css}>{v.html}</td>"
        return f"<td class=n>{v}</td>" if i in numeric else f"<td>{v}</td>"

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        (f"<tr class={row_css[k]}>" if row_css and row_css[k] else "<tr>")
        + "".join(td(i, v) for i, v in enumerate(row)) + "</tr>"
        for k, row in enumerate(rows)
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def png_img(fig: Any, alt: str) -> str:
    """A matplotlib figure as an inline PNG `<img>` (the page stays one file); closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def html_page(title: str, body: str) -> str:
    """The whole page: `body` under one stylesheet."""
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )
