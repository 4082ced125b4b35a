"""`tunegate review serve`: a small local page to accept, reject or edit queued rows.

Plain HTML forms (no JavaScript needed): each pending row shows its scores, flags and
messages in editable boxes, and three buttons. Every decision is written to the lineage DB
under the signed-in reviewer's name, with the time, in the same transaction as the row's new
verdict. A JSON API (`/api/items`) serves scripts (`Authorization: Bearer TOKEN`).

What a decision changes is training data, so every request passes `tunegate.review.guard`:
Host allow-list, a reviewer token, cross-site refusal with a CSRF token, bounded bodies.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from tunegate.lineage import Lineage
from tunegate.review.guard import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    Guard,
    Refused,
    Reviewer,
    is_loopback,
)
from tunegate.review.triage import ReviewError, decide

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


def _item_html(item: dict[str, Any], csrf: str) -> str:
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
    <input type="hidden" name="{CSRF_FIELD}" value="{csrf}">
    <p>note <input name="note" id="note-{iid}" size="40"></p>
    <button name="decision" value="accept" id="accept-{iid}">Accept</button>
    <button name="decision" value="reject" id="reject-{iid}">Reject</button>
    <button name="decision" value="edit" id="edit-{iid}">Save edit &amp; accept</button>
  </form>
</div>"""


DECISION_FIELDS = {"decision", "note", "contents"}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    # the sign-in link carries the token; `no-referrer` would make our own forms send Origin: null
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _refusal(request: Request, exc: Refused) -> Response:
    """A refused request: JSON for the API, a short page for the browser."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>tunegate review: refused"
        f"</title></head><body><h1>refused</h1><p id='refused'>{html.escape(exc.message)}</p>"
        "</body></html>"
    )
    return HTMLResponse(page, status_code=exc.status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit` bytes: never held whole past it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refused(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise Refused(413, f"the body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the body passed the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(400, f"the body is not valid UTF-8 (byte {exc.start})") from None


def _clean(value: Any, what: str) -> str:
    """A JSON string that can be stored: no lone surrogates (`"\\ud800"` parses, but is no text)."""
    if not isinstance(value, str):
        raise Refused(400, f"{what} must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Refused(400, f"{what} holds an unpaired surrogate at character {exc.start}") from None
    return value


def _json_decision(body: bytes) -> tuple[str, str, list[str] | None]:
    """(decision, note, contents) from an API body, or a 400 that says what is wrong."""
    try:
        data = json.loads(_text(body))
    except RecursionError:
        raise Refused(400, "the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise Refused(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused(400, f"the body must be a JSON object, not {type(data).__name__}")
    if "reviewer" in data:
        raise Refused(400, "the reviewer is the signed-in token's name; drop the 'reviewer' field")
    unknown = sorted(set(data) - DECISION_FIELDS)
    if unknown:
        raise Refused(400, f"unknown field(s) {unknown}; expected {sorted(DECISION_FIELDS)}")
    contents = data.get("contents")
    if contents is not None:
        if not isinstance(contents, list):
            raise Refused(400, f"contents must be a list of strings, not {type(contents).__name__}")
        contents = [_clean(c, f"contents[{i}]") for i, c in enumerate(contents)]
    return _clean(data.get("decision"), "decision"), _clean(data.get("note", ""), "note"), contents


def _form(text: str) -> dict[str, str]:
    try:
        fields = parse_qs(text, keep_blank_values=True, errors="strict", max_num_fields=1000)
    except UnicodeDecodeError as exc:
        raise Refused(400, f"a form field is not valid UTF-8 once decoded: {exc.reason}") from None
    except ValueError as exc:
        raise Refused(400, f"the form is malformed: {exc}") from None
    return {k: v[-1] for k, v in fields.items()}


def create_app(lineage: Lineage, guard: Guard, run_id: str | None = None) -> FastAPI:
    """The review app over one lineage DB; `run_id` limits it to one run's queue."""
    app = FastAPI(title="tunegate review", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def check_every_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Host, then who: before any route runs (`/healthz` needs no token)."""
        try:
            guard.check_host(request.headers.get("host"))
            if request.url.path != "/healthz":
                token = request.query_params.get("token")
                if token is not None and request.method == "GET":  # the printed sign-in link
                    guard.reviewer(f"Bearer {token}", None)
                    # the token leaves the address bar (and the history) at once
                    response: Response = RedirectResponse(request.url.path, status_code=303)
                    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
                    response.headers.update(SECURITY_HEADERS)
                    return response
                request.state.reviewer = guard.reviewer(
                    request.headers.get("authorization"), request.cookies.get(COOKIE)
                )
            response = await call_next(request)
        except Refused as exc:
            response = _refusal(request, exc)
        response.headers.update(SECURITY_HEADERS)
        return response

    def state_change(request: Request, content_type: str) -> Reviewer:
        guard.check_same_origin(request.headers, content_type, request.headers.get("host", ""))
        return request.state.reviewer

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, done: str = "", error: str = "") -> str:
        reviewer: Reviewer = request.state.reviewer
        items = lineage.review_items(run_id, "pending")
        banner = f'<p class="error" id="error">{html.escape(error)}</p>' if error else ""
        if done:
            banner += f'<p id="done">saved decision on {html.escape(done)}</p>'
        csrf = guard.csrf_token(reviewer)
        body = "".join(_item_html(i, csrf) for i in items) or '<p id="empty">Nothing pending.</p>'
        scope = f"run {html.escape(run_id)}" if run_id else "all runs"
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>tunegate review</title>"
            f"<style>{STYLE}</style></head><body><h1>tunegate review</h1>"
            f'<p>signed in as <b id="reviewer">{html.escape(reviewer.name)}</b>: decisions are '
            f"recorded under this name.</p>"
            f'<p><span id="pending-count">{len(items)}</span> row(s) pending ({scope}). '
            f"Accepted rows train; rejected ones are recorded as <code>review_rejected</code>."
            f"</p>{banner}{body}</body></html>"
        )

    @app.post("/items/{item_id}")
    async def decide_form(item_id: str, request: Request) -> Response:
        try:
            reviewer = state_change(request, "application/x-www-form-urlencoded")
            form = _form(_text(await _read_body(request, guard.max_body_bytes)))
            guard.check_csrf(reviewer, form.get(CSRF_FIELD))
        except Refused as exc:
            return _refusal(request, exc)
        contents = [form[f"content_{i}"] for i in range(len(form)) if f"content_{i}" in form]
        query: dict[str, str] = {}
        try:
            edited = [c.replace("\r\n", "\n") for c in contents]  # browsers send CRLF
            decide(lineage, item_id, form.get("decision", ""), reviewer.name,
                   form.get("note", ""), edited)  # fmt: skip
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
    async def decide_json(item_id: str, request: Request) -> Response:
        try:
            reviewer = state_change(request, "application/json")
            guard.check_csrf(reviewer, request.headers.get(CSRF_HEADER))
            decision, note, contents = _json_decision(
                await _read_body(request, guard.max_body_bytes)
            )
            applied = decide(lineage, item_id, decision, reviewer.name, note, contents)
        except Refused as exc:
            return _refusal(request, exc)
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"item_id": item_id, "applied": applied, "reviewer": reviewer.name})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def bind_warning(host: str, guard: Guard) -> str | None:
    """What to tell the operator when the page is reachable from other machines."""
    if is_loopback(host):
        return None
    return (
        f"WARNING: the review page is bound to {host}, beyond this machine: anyone who can reach "
        "it can try tokens, and plain HTTP carries the token unencrypted. Prefer the default "
        "127.0.0.1 behind an SSH tunnel or a TLS proxy. Host names served: "
        f"{', '.join(sorted(guard.allowed_hosts))} (add the one reviewers use with --allow-host)."
    )


def serve(lineage: Lineage, guard: Guard, run_id: str | None, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(lineage, guard, run_id), host=host, port=port, log_level="warning",
                server_header=False, h11_max_incomplete_event_size=64 * 1024)  # fmt: skip
