"""`reports/trends.html`: every night side by side, with what changed since the night before.

One self-contained page (no scripts, no network) a data team opens in the morning; the same
table as Markdown becomes the Prefect artifact `nightly-trends`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunegate.render import escape, html_page, html_table, markdown_table
from tunegate.runs.history import Night, changes

HEADER = ["night (UTC)", "run", "status", "duration", "rows in", "accepted", "rejected by reason",
          "gates", "promoted adapter", "changed since the night before"]  # fmt: skip


def _duration(night: Night) -> str:
    s = night.duration_s
    return "" if s is None else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def _reasons(night: Night) -> list[str]:
    ranked = sorted(night.rejected.items(), key=lambda kv: -kv[1])
    return [f"{reason} {n} ({night.share(reason):.1%})" for reason, n in ranked]


def _gates(night: Night) -> list[str]:
    return [
        f"{g.gate} {g.label} {g.value:+.3f} (threshold {g.threshold:+.3f})" for g in night.gates
    ]


def night_rows(nights: Sequence[Night]) -> list[tuple[Night, list[str]]]:
    """Each night with its change flags, newest first (what a reader wants on top)."""
    flagged = [(n, changes(nights[i - 1] if i else None, n)) for i, n in enumerate(nights)]
    return flagged[::-1]


def trends_markdown(nights: Sequence[Night]) -> str:
    rows = [
        (f"{n.started_at:%Y-%m-%d %H:%M}", n.run_id, n.status, _duration(n), n.rows_in, n.accepted,
         "; ".join(_reasons(n)), "; ".join(_gates(n)), (n.promoted_adapter or "")[:12],
         "; ".join(flags + ([(n.detail or "")[:200]] if n.status == "failed" else [])))
        for n, flags in night_rows(nights)
    ]  # fmt: skip
    return f"**{len(nights)} nights**\n\n" + markdown_table(HEADER, rows)


def _list(items: Sequence[str], css: str = "") -> str:
    if not items:
        return ""
    cls = f' class="{css}"' if css else ""
    return "<ul>" + "".join(f"<li{cls}>{escape(i)}</li>" for i in items) + "</ul>"


def write_trends(reports_dir: Path, nights: Sequence[Night]) -> Path:
    """Write `reports/trends.html` and return its path."""
    rows, row_css = [], []
    for n, flags in night_rows(nights):
        gates = "".join(
            f'<li class="{"" if g.passed else "fail"}">{escape(text)}</li>'
            for g, text in zip(n.gates, _gates(n), strict=True)
        )
        detail = f"<br><small>{escape((n.detail or '')[:400])}</small>" if n.detail else ""
        rows.append([
            f"{n.started_at:%Y-%m-%d %H:%M}", escape(n.run_id),
            f'<span class="{n.status}">{escape(n.status)}</span>{detail}', _duration(n),
            str(n.rows_in), str(n.accepted), _list(_reasons(n)),
            f"<ul>{gates}</ul>" if gates else "", escape((n.promoted_adapter or "")[:16]),
            _list(flags),
        ])  # fmt: skip
        row_css.append("flag" if flags else "")
    page = html_page(
        "tunegate nights",
        f"<h1>tunegate: {len(nights)} nights</h1>"
        "<p>Newest first. Highlighted rows changed since the night before: a rejection "
        "reason's share jumped, a source appeared or went, accepted rows dropped, a gate "
        "moved toward its threshold, or the decision changed.</p>"
        + html_table(HEADER, rows, row_css=row_css),
    )
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / "trends.html"
    path.write_text(page)
    return path
