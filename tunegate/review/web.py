"""`tunegate review serve`: a small local page to accept, reject or edit queued rows.

Plain HTML forms (no JavaScript needed): each pending row shows its scores, flags and
messages in editable boxes, and three buttons. Every decision names a reviewer and is
written to the lineage DB with the time, in the same transaction as the row's new verdict.
A JSON API (`/api/items`) serves scripts.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from tunegate.lineage import Lineage
from tunegate.review.stage import ReviewError, decide

# Scores shown first; the rest (Gopher n-gram fractions) follow in a smaller table.
KEY_SCORES = ("answer_words", "length_ratio", "near_copy", "perplexity", "answer_repeats",
              "alpha_word_frac", "refusal_hits", "boilerplate_hits")  # fmt: skip

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
.item { border: 1px solid #ccc; border-radius: 6px; padding: 1rem; margin: 1rem 0; }
.flag { background: #fde2e1; color: #8a1c1c; padding: 0 .4rem; border-radius: 4px; }
textarea { width: 100%; font-family: ui-monospace, monospace; font-size: .9rem; }
.scores { font-size: .85rem; color: #444; } table.scores td { padding: 0 .8rem 0 0; }
.role { font-weight: 600; margin-top: .5rem; }
.msg { background: #e6f4ea; padding: .5rem; border-radius: 4px; }
.error { background: #fde2e1; padding: .5rem; }
button { margin-right: .5rem; padding: .3rem 1rem; }
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def _rows(text: str) -> int:
    return min(12, 2 + text.count("\n") + len(text) // 100)


def _item_html(item: dict[str, Any], reviewer: str) -> str:
    iid = html.escape(item["item_id"])
    messages = json.loads(item["messages_json"] or "[]")
    flags = "".join(f'<span class="flag">{html.escape(f)}</span>' for f in item["flags"])
    scores = item["scores"]
    main = " · ".join(
        f"{html.escape(k)} <b>{_fmt(scores[k])}</b>" for k in KEY_SCORES if k in scores
    )
    rest = sorted(k for k in scores if k not in KEY_SCORES)
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(scores[k])}</td></tr>" for k in rest)
    boxes = "".join(
        f'<div class="role">{html.escape(m["role"])}</div>'
        f'<textarea name="content_{i}" id="content-{iid}-{i}" rows="{_rows(m["content"])}">'
        f"{html.escape(m['content'])}</textarea>"
        for i, m in enumerate(messages)
    )  # fmt: skip
    return f"""
<div class="item" id="item-{iid}" data-item="{iid}">
  <div><b>{html.escape(item["source"])}:{item["source_row"]}</b> · run {html.escape(item["run_id"])}
    · record {html.escape(item["record_id"][:12])} · {flags}</div>
  <div class="scores" id="scores-{iid}">{main}</div>
  <details><summary>repetition scores</summary><table class="scores">{cells}</table></details>
  <form method="post" action="/items/{iid}">
    {boxes}
    <p>reviewer <input name="reviewer" id="reviewer-{iid}" value="{html.escape(reviewer)}" required>
       note <input name="note" id="note-{iid}" size="40"></p>
    <button name="decision" value="accept" id="accept-{iid}">Accept</button>
    <button name="decision" value="reject" id="reject-{iid}">Reject</button>
    <button name="decision" value="edit" id="edit-{iid}">Save edit &amp; accept</button>
  </form>
</div>"""


def create_app(lineage: Lineage, run_id: str | None = None) -> FastAPI:
    """The review app over one lineage DB; `run_id` limits it to one run's queue."""
    app = FastAPI(title="tunegate review", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index(reviewer: str = "", done: str = "", error: str = "") -> str:
        items = lineage.review_items(run_id, "pending")
        banner = f'<p class="error" id="error">{html.escape(error)}</p>' if error else ""
        if done:
            banner += f'<p id="done">saved decision on {html.escape(done)}</p>'
        body = (
            "".join(_item_html(i, reviewer) for i in items) or '<p id="empty">Nothing pending.</p>'
        )
        scope = f"run {html.escape(run_id)}" if run_id else "all runs"
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>tunegate review</title>"
            f"<style>{STYLE}</style></head><body><h1>tunegate review</h1>"
            f'<p><span id="pending-count">{len(items)}</span> row(s) pending ({scope}). '
            f"Accepted rows train; rejected ones are recorded as <code>review_rejected</code>."
            f"</p>{banner}{body}</body></html>"
        )

    @app.post("/items/{item_id}")
    async def decide_form(item_id: str, request: Request) -> RedirectResponse:
        fields = parse_qs((await request.body()).decode(), keep_blank_values=True)
        form = {k: v[-1] for k, v in fields.items()}
        reviewer = form.get("reviewer", "").strip()
        contents = [form[f"content_{i}"] for i in range(len(form)) if f"content_{i}" in form]
        query: dict[str, str] = {"reviewer": reviewer}
        try:
            if not reviewer:
                raise ReviewError("enter a reviewer name")
            edited = [c.replace("\r\n", "\n") for c in contents]  # browsers send CRLF
            decide(
                lineage, item_id, form.get("decision", ""), reviewer, form.get("note", ""), edited
            )
            query["done"] = item_id
        except ReviewError as exc:
            query["error"] = str(exc)
        return RedirectResponse("/?" + urlencode(query), status_code=303)

    @app.get("/api/items")
    def items(status: str | None = "pending") -> list[dict[str, Any]]:
        rows = lineage.review_items(run_id, status or None)
        for row in rows:  # JSON has no NaN: a score that was not computed is null
            row["scores"] = {k: None if isinstance(v, float) and math.isnan(v) else v
                             for k, v in row["scores"].items()}  # fmt: skip
        return json.loads(json.dumps(rows, default=str))

    @app.post("/api/items/{item_id}")
    async def decide_json(item_id: str, request: Request) -> JSONResponse:
        body = await request.json()
        try:
            applied = decide(lineage, item_id, str(body.get("decision", "")),
                             str(body.get("reviewer", "")).strip(), str(body.get("note", "")),
                             body.get("contents"))  # fmt: skip
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"item_id": item_id, "applied": applied})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve(lineage: Lineage, run_id: str | None, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(lineage, run_id), host=host, port=port, log_level="warning")
