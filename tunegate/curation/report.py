"""The data quality report: `reports/<run id>/quality.html`, one self-contained page.

What a data team reads after a curation run: the funnel (rows in, rejected per stage and
reason, rows out), word-length histograms before and after, duplicate clusters side by
side with the row they duplicate, examples of every reason with the raw row, a per-source
breakdown, contamination hits with their eval items, and the batch expectations with a
link to the Great Expectations Data Docs. Charts are matplotlib PNGs embedded inline.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from tunegate.curation.checks import reason_codes
from tunegate.curation.expectations import SuiteResult
from tunegate.curation.funnel import FunnelStats
from tunegate.lineage import Lineage
from tunegate.render import clip, html_page, html_table, markdown_table, png_img
from tunegate.render import escape as _e


def _from_raw(raw: str) -> list[dict[str, str]] | None:
    """Messages of a rejected row, re-read from its raw text (None: it does not convert)."""
    from tunegate.data.ingest import RowError, detect_format, to_messages

    try:
        data = json.loads(raw)
        fmt = detect_format(data) if isinstance(data, dict) else None
        pairs = to_messages(data, fmt) if fmt else None
    except (ValueError, TypeError, RowError, RecursionError):  # hostile rows stay raw text
        return None
    return [{"role": r, "content": c} for r, c in pairs] if pairs else None


def _load(messages_json: str | None, raw: str | None) -> list[dict[str, str]] | None:
    return json.loads(messages_json) if messages_json else (_from_raw(raw) if raw else None)


def _marked(text: str, other: str | None) -> str:
    """The text with its words that differ from `other` marked (case and spacing ignored)."""
    text = clip(text, 600)
    if other is None:
        return _e(text)
    tokens = re.findall(r"\S+|\s+", text)
    at = [i for i, t in enumerate(tokens) if not t.isspace()]
    mine = [tokens[i].casefold() for i in at]
    theirs = [t.casefold() for t in clip(other, 600).split()]
    marked: set[int] = set()
    matcher = difflib.SequenceMatcher(None, mine, theirs, autojunk=False)
    for op, i1, i2, _, _ in matcher.get_opcodes():
        if op != "equal":
            marked.update(at[i1:i2])
    return "".join(f"<mark>{_e(t)}</mark>" if i in marked else _e(t) for i, t in enumerate(tokens))


def _messages(messages_json: str | None, raw: str | None = None,
              other: list[dict[str, str]] | None = None) -> str:  # fmt: skip
    """A conversation as HTML; with `other`, words that differ from it are marked."""
    msgs = _load(messages_json, raw)
    if msgs:
        return "".join(
            f"<div class='msg'><span class='role'>{_e(m['role'])}:</span> "
            f"{_marked(m['content'], other[k]['content'] if other and k < len(other) else None)}"
            "</div>" for k, m in enumerate(msgs)
        )  # fmt: skip
    if raw:
        return f"<pre>{_e(clip(raw, 1200))}</pre>"
    return "<span class='muted'>(not available)</span>"


def length_histogram(before: np.ndarray, after: np.ndarray, *, unit: str) -> str:
    """Length per conversation, all parsed rows vs accepted rows, log-spaced bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.4))
    top = max(int(before.max()) if len(before) else 1, 2)
    bins = np.unique(np.geomspace(1, top + 1, 40).astype(int))
    ax.hist(
        np.clip(before, 1, None), bins=bins, alpha=0.55, label=f"before: {len(before)} parsed rows"
    )
    ax.hist(
        np.clip(after, 1, None), bins=bins, alpha=0.75, label=f"after: {len(after)} accepted rows"
    )
    ax.set_xscale("log")
    ax.set_xlabel(f"{unit} per conversation")
    ax.set_ylabel("rows")
    ax.legend()
    return png_img(fig, "chart")


def funnel_chart(stats: FunnelStats) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(stats.stages.values())
    names = ["input", *[f"{s.name}: {s.reason}" for s in stages], "accepted"]
    values = [stats.n_input, *[s.rejected for s in stages], stats.counts.get("accepted", 0)]
    colors = ["#4c78a8", *["#e45756"] * len(stages), "#54a24b"]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 0.8))
    ax.barh(names[::-1], [max(v, 0.8) for v in values[::-1]], color=colors[::-1])
    for y, v in enumerate(values[::-1]):
        ax.text(max(v, 0.8), y, f" {v}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("rows (log scale): input, rejected at each stage, accepted")
    return png_img(fig, "chart")


def _stats_line(a: np.ndarray) -> str:
    if not len(a):
        return "no rows"
    p = np.percentile(a, [50, 95])
    return f"median {p[0]:.0f}, p95 {p[1]:.0f}, max {a.max()}"


STAGE_HEADER = ("stage", "reason", "rows in", "rejected", "rows out", "rows/s")


def _docs_links(suite: SuiteResult, folder: Path) -> str:
    """Links (relative, so the run folder can be moved) to the Data Docs and this run's result."""
    links = []
    if suite.docs is not None:
        links.append(f"<a href='{_e(suite.docs.relative_to(folder))}'>Data Docs</a>")
    if suite.validation is not None:
        rel = suite.validation.relative_to(folder)
        links.append(f"<a href='{_e(rel)}'>this run's validation result</a>")
    return "".join(f" · {link}" for link in links)


def stage_rows(stats: FunnelStats) -> list[tuple[Any, ...]]:
    """(stage, reason, rows in, rejected, rows out, rows/s) per stage, in funnel order."""
    out = []
    for s in stats.stages.values():
        rate = f"{s.rows_per_s:,.0f}" if s.seconds else "-"
        out.append((s.name, s.reason, s.rows_in, s.rejected, s.rows_in - s.rejected, rate))
    return out


def stage_funnel_markdown(stats: FunnelStats, report: Path | None = None) -> str:
    """The funnel per stage as Markdown (the Prefect artifact)."""
    accepted = stats.counts.get("accepted", 0)
    head = f"**{stats.n_input} input rows → {accepted} accepted**"
    if report is not None:
        head += f" · quality report: `{report}`"
    table = markdown_table(STAGE_HEADER, stage_rows(stats))
    return f"{head}\n\n{table}"


def write_quality_report(
    path: Path,
    run_id: str,
    lineage: Lineage,
    stats: FunnelStats,
    suite: SuiteResult | None,
    notes: dict[str, str] | None = None,
) -> Path:
    """Render the report for one run from its lineage rows and funnel stats."""
    before = np.frombuffer(stats.words_before, dtype=np.int32)
    after = np.frombuffer(stats.words_after, dtype=np.int32)
    accepted = stats.counts.get("accepted", 0)
    rejected = stats.n_input - accepted
    recorded = sum(lineage.verdict_counts(run_id).values())
    conserved = recorded == stats.n_input
    parts: list[str] = [f"<h1>Data quality report — run <code>{_e(run_id)}</code></h1>"]
    gx_cell = "not run"
    if suite is not None:
        status = (
            "<span class='ok'>passed</span>" if suite.success else "<span class='bad'>FAILED</span>"
        )
        link = _docs_links(suite, path.parent)
        gx_cell = (
            f"{status} ({len(suite.outcomes) - len(suite.failures)}/{len(suite.outcomes)}){link}"
        )
    check = "<span class='ok'>holds</span>" if conserved else "<span class='bad'>BROKEN</span>"
    parts.append(
        "<table class='summary'>"
        f"<tr><td>input rows</td><td><b>{stats.n_input}</b></td></tr>"
        f"<tr><td>accepted</td><td><b>{accepted}</b></td></tr>"
        f"<tr><td>rejected</td><td><b>{rejected}</b></td></tr>"
        f"<tr><td>conservation</td><td>{check}: {recorded} verdicts recorded = "
        f"{accepted} accepted + {rejected} rejected</td></tr>"
        f"<tr><td>batch expectations</td><td>{gx_cell}</td></tr>"
        + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in (notes or {}).items())
        + "</table>"
    )  # fmt: skip

    # 1. the funnel
    parts.append("<h2>Funnel: rows per stage</h2>")
    parts.append(html_table(STAGE_HEADER, stage_rows(stats), numeric=(2, 3, 4, 5)))
    parts.append(funnel_chart(stats))
    reasons = sorted(stats.counts.items(), key=lambda kv: -kv[1])
    meanings = reason_codes()
    parts.append("<h2>Verdicts by reason</h2>")
    parts.append(html_table(["verdict", "rows", "share", "meaning"], [
        (_e(k), n, f"{n / max(stats.n_input, 1):.1%}", _e(meanings.get(k, "trains")))
        for k, n in reasons], numeric=(1, 2)))  # fmt: skip

    # 2. per source
    by_source: dict[str, dict[str, int]] = {}
    for r in lineage.verdicts_by_source(run_id):
        by_source.setdefault(r["source"], {})[r["verdict"]] = r["n"]
    verdict_names = [k for k, _ in reasons]
    parts.append("<h2>Per source</h2>")
    parts.append(html_table(["source", "rows", *verdict_names], [
        (_e(src), sum(c.values()), *(c.get(v, 0) for v in verdict_names))
        for src, c in sorted(by_source.items())
    ], numeric=tuple(range(1, len(verdict_names) + 2))))  # fmt: skip

    # 3. lengths
    parts.append("<h2>Conversation length, before and after curation</h2>")
    lengths = [("words (runs of letters and digits)", before, after)]
    if len(stats.tokens_before):  # curation had the base model's tokenizer: plot tokens
        lengths.insert(0, ("base-model tokens (message contents)",
                           np.frombuffer(stats.tokens_before, dtype=np.int32),
                           np.frombuffer(stats.tokens_after, dtype=np.int32)))  # fmt: skip
    for unit, b, a in lengths:
        parts.append(f"<p>{_e(unit)}: before {_stats_line(b)} · after {_stats_line(a)}</p>")
    unit, b, a = lengths[0]
    parts.append(length_histogram(b, a, unit=unit))

    # 4. duplicates side by side
    parts.append("<h2>Duplicate clusters</h2>")
    clusters = lineage.cluster_sizes(run_id)
    if clusters:
        parts.append(f"<p>{len(clusters)} clusters; the largest:</p>")
        parts.append(html_table(["cluster", "reason", "rejected copies", "kept row"], [
            (f"<code>{_e(c['cluster_id'])}</code>", _e(c["reason"]), c["copies"], _e(c["kept"]))
            for c in clusters[:10]], numeric=(2,)))  # fmt: skip
    for reason in ("exact_duplicate", "near_duplicate", "duplicate_response"):
        pairs = lineage.duplicate_pairs(run_id, reason, limit=4)
        if not pairs:
            continue
        parts.append(f"<h3>{_e(reason)}</h3>")
        for p in pairs:
            kept = _load(p["kept_messages_json"], p["kept_raw"])
            copy = _load(p["messages_json"], p["raw"])
            left = _messages(p["kept_messages_json"], p["kept_raw"], copy)
            right = _messages(p["messages_json"], p["raw"], kept)
            cluster = f"cluster <code>{_e(p['cluster_id'])}</code>"
            parts.append(
                f"<p class='muted'>{_e(p['detail'])} · {cluster}</p><div class='pair'>"
                f"<div class='card'><b>kept</b> {_e(p['duplicate_of'])}{left}</div>"
                f"<div class='card'><b>rejected</b> {_e(p['source'])}:{p['source_row']}"
                f"{right}</div></div>"
            )  # fmt: skip
    if not clusters:
        parts.append("<p class='muted'>none</p>")

    # 5. examples per reason
    parts.append("<h2>Examples per reason</h2>")
    examples = lineage.rejected_examples(run_id, per_reason=3)
    if not examples:
        parts.append("<p class='muted'>no rejected rows</p>")
    current = None
    for x in examples:
        if x["reason"] != current:
            current = x["reason"]
            parts.append(f"<h3>{_e(current)} <span class='muted'>— "
                         f"{_e(meanings.get(current, ''))}</span></h3>")  # fmt: skip
        extra = f" · eval item <code>{_e(x['eval_item'])}</code>" if x["eval_item"] else ""
        parts.append(f"<div class='card'><b>{_e(x['source'])}:{x['source_row']}</b>{extra}"
                     f"<div class='muted'>{_e(x['detail'])}</div>"
                     f"{_messages(x['messages_json'], x['raw'])}</div><br>")  # fmt: skip

    # 6. batch expectations
    parts.append("<h2>Batch expectations (Great Expectations)</h2>")
    if suite is None:
        parts.append("<p class='muted'>not run (contracts.batch_suite is null)</p>")
    else:
        parts.append(f"<p>Suite <code>{_e(suite.path)}</code>{_docs_links(suite, path.parent)}</p>")
        parts.append(html_table(["expectation", "column", "result", "observed", "why"], [
            (_e(o.type), _e(o.column or ""),
             "<span class='ok'>pass</span>" if o.success else "<span class='bad'>FAIL</span>",
             _e(o.observed), _e(o.notes)) for o in suite.outcomes]))  # fmt: skip

    page = html_page(f"quality {run_id}", "".join(parts))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
