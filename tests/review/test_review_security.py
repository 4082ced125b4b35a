"""The review page under attack: nobody without a token reads or decides, no other site decides.

The cross-site attempts are the ones that worked before the page was guarded (a `file://`
page auto-submitting a form, a form served from another localhost port, a `no-cors` fetch with
a `text/plain` body, an `enctype=text/plain` form, a DNS-rebinding host name), run in headless
Chromium against `tunegate review serve`; the queue must be unchanged after each.
"""

from __future__ import annotations

import functools
import http.server
import re
import threading
import time

import pytest
from browser import chromium, free_port, needs_chromium, review_server
from fastapi.testclient import TestClient
from test_review import ALICE, BOB, items_by_row, queued, signed_in  # noqa: F401 (fixture)

from tunegate.review.guard import Guard, load_tokens
from tunegate.review.web import bind_warning, create_app

pytestmark = pytest.mark.integration

ORIGIN = "http://127.0.0.1:8765"


def unchanged(lineage, run) -> None:
    """Nothing was decided: 3 rows pending, no decision logged."""
    assert [i["status"] for i in lineage.review_items(run, None)] == ["pending"] * 3
    assert lineage.query("SELECT count(*) AS n FROM review_decisions")[0]["n"] == 0


@pytest.fixture()
def app(queued):  # noqa: F811
    _cfg, lineage, run, _ = queued
    guard = Guard({ALICE: "alice", BOB: "bob"}, max_body_bytes=4096)
    return create_app(lineage, guard, run), lineage, run


def test_every_request_needs_a_token_and_an_allowed_host(app):
    app, lineage, run = app
    client = TestClient(app, base_url=ORIGIN)
    item = items_by_row(lineage, run)[2]
    for method, path in [("GET", "/"), ("GET", "/api/items"), ("POST", f"/items/{item}"),
                         ("POST", f"/api/items/{item}")]:  # fmt: skip
        res = client.request(method, path)
        assert res.status_code == 401 and "sign in" in res.text, (method, path)
    bad = client.get("/api/items", headers={"Authorization": "Bearer not-a-token-at-all-xx"})
    assert bad.status_code == 401 and "unknown" in bad.json()["error"]
    assert client.get("/?token=wrong-token-0123456789").status_code == 401
    assert client.get("/healthz").json() == {"status": "ok"}
    bearer = {"Authorization": f"Bearer {ALICE}"}
    assert client.get("/api/items", headers=bearer).status_code == 200
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, the Host header still says it
    rebound = TestClient(app, base_url="http://rebind.test:8765")
    res = rebound.get("/api/items", headers=bearer)
    assert res.status_code == 421 and "'rebind.test' is not served here" in res.json()["error"]
    assert TestClient(app, base_url="http://[::1]:8765").get("/healthz").status_code == 200
    # the sign-in link sets a cookie no script and no other site gets
    res = TestClient(app, base_url=ORIGIN).get(f"/?token={ALICE}", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/"
    cookie = res.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert res.headers["x-frame-options"] == "DENY" and res.headers["cache-control"] == "no-store"
    unchanged(lineage, run)


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"Origin": "null"}, 403, "Origin: null"),  # a file:// page
        ({"Origin": "http://127.0.0.1:9999"}, 403, "Origin: http://127.0.0.1:9999"),
        ({"Sec-Fetch-Site": "same-site"}, 403, "Sec-Fetch-Site: same-site"),  # another port
        ({"Sec-Fetch-Site": "cross-site"}, 403, "Sec-Fetch-Site: cross-site"),
        ({"Content-Type": "text/plain"}, 415, "application/x-www-form-urlencoded"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "multipart/form-data"),
    ],
)
def test_forged_form_posts_are_refused(app, headers, status, message):
    app, lineage, run = app
    client, csrf = signed_in(app)
    item = items_by_row(lineage, run)[2]
    body = f"decision=accept&csrf={csrf}"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    res = client.post(f"/items/{item}", content=body, headers=form | headers)
    assert res.status_code == status and message in res.text
    unchanged(lineage, run)


def test_a_form_post_without_the_page_csrf_token_is_refused(app):
    app, lineage, run = app
    client, csrf = signed_in(app)
    item = items_by_row(lineage, run)[2]
    for body in ({"decision": "accept"}, {"decision": "accept", "csrf": "0" * 64}):
        res = client.post(f"/items/{item}", data=body, follow_redirects=False)
        assert res.status_code == 403 and "CSRF token" in res.text
    unchanged(lineage, run)
    # the same request with the page's token (and a same-origin browser's headers) is applied
    same = {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}
    res = client.post(f"/items/{item}", data={"decision": "accept", "csrf": csrf},
                      headers=same, follow_redirects=False)  # fmt: skip
    assert res.status_code == 303 and "done=" in res.headers["location"]


def test_the_api_takes_json_only_and_a_csrf_token_with_a_cookie(app):
    app, lineage, run = app
    client, csrf = signed_in(app)
    item = items_by_row(lineage, run)[2]
    plain = client.post(f"/api/items/{item}", content='{"decision": "accept"}',
                        headers={"Content-Type": "text/plain"})  # fmt: skip
    assert plain.status_code == 415 and "application/json" in plain.json()["error"]
    no_csrf = client.post(f"/api/items/{item}", json={"decision": "accept"})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
    unchanged(lineage, run)
    ok = client.post(f"/api/items/{item}", json={"decision": "accept"},
                     headers={"X-CSRF-Token": csrf})  # fmt: skip
    assert ok.json() == {"item_id": item, "applied": True, "reviewer": "alice"}


BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"null", "must be a JSON object, not NoneType"),
    (b"[1]", "must be a JSON object, not list"),
    (b"[" * 100_000 + b"]" * 100_000, None),  # 200 kB: over the 4 kB limit of this app
    (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
    (b'{"decision": "accept", "note": "caf\xe9"}', "not valid UTF-8 (byte 35)"),
    (b'{"decision": "accept", "note": "\\ud800"}', "note holds an unpaired surrogate"),
    (b'{"decision": "accept", "reviewer": {"a": 1}}', "drop the 'reviewer' field"),
    (b'{"decision": "accept", "reviewer": "mallory"}', "drop the 'reviewer' field"),
    (b'{"decision": 1}', "decision must be a string, not int"),
    (b'{"decision": "edit", "contents": "x"}', "contents must be a list of strings"),
    (b'{"decision": "edit", "contents": [1, 2, 3]}', "contents[0] must be a string"),
    (b'{"decision": "accept", "extra": 1}', "unknown field(s) ['extra']"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_malformed_api_bodies_are_clear_4xx(app, body, message):
    app, lineage, run = app
    client = TestClient(app, base_url=ORIGIN)
    item = items_by_row(lineage, run)[2]
    res = client.post(f"/api/items/{item}", content=body, headers={
        "Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"})  # fmt: skip
    if message is None:
        assert res.status_code == 413 and "the limit is 4096" in res.json()["error"]
    else:
        assert res.status_code == 400 and message in res.json()["error"], res.text
    unchanged(lineage, run)


def test_oversized_and_broken_form_bodies(app):
    app, lineage, run = app
    client, csrf = signed_in(app)
    item = items_by_row(lineage, run)[2]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    huge = client.post(f"/items/{item}", content=b"a" * 10_000, headers=form)
    assert huge.status_code == 413 and "4096" in huge.text

    def chunks():  # no Content-Length: refused while it streams, not after
        yield b"note="
        for _ in range(100):
            yield b"x" * 1000

    streamed = client.post(f"/items/{item}", content=chunks(), headers=form)
    assert streamed.status_code == 413 and "passed the limit" in streamed.text
    bad_utf8 = client.post(f"/items/{item}", content=b"decision=accept&note=\xff", headers=form)
    assert bad_utf8.status_code == 400 and "not valid UTF-8 (byte 21)" in bad_utf8.text
    escaped = client.post(f"/items/{item}", content=f"csrf={csrf}&note=%ff", headers=form)
    assert escaped.status_code == 400 and "not valid UTF-8 once decoded" in escaped.text
    unchanged(lineage, run)


@pytest.mark.unit
def test_tokens_file_warning_and_weak_tokens(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# reviewers\nalice " + ALICE + "\nbob " + BOB + "  # the second\n")
    assert load_tokens(path) == {ALICE: "alice", BOB: "bob"}
    path.write_text("alice\n")
    with pytest.raises(ValueError, match="tokens:1: expected `NAME TOKEN`"):
        load_tokens(path)
    with pytest.raises(ValueError, match="at least 16"):
        Guard({"short": "alice"})
    guard = Guard({ALICE: "alice"})
    assert all(bind_warning(h, guard) is None for h in ("127.0.0.1", "localhost", "::1"))
    assert "beyond this machine" in bind_warning("0.0.0.0", guard)


# -- the same attempts from a real browser ------------------------------------------------------


def auto_submit(action: str, fields: dict[str, str], enctype: str = "") -> str:
    inputs = "".join(f"<input name='{k}' value='{v}'>" for k, v in fields.items())
    enc = f" enctype='{enctype}'" if enctype else ""
    return (f"<!doctype html><form method='post' action='{action}'{enc}>{inputs}</form>"
            "<script>document.forms[0].submit()</script>")  # fmt: skip


def no_cors_fetch(url: str, body: str, content_type: str) -> str:
    return (
        "<!doctype html><script>fetch(" + repr(url) + ", {method: 'POST', mode: 'no-cors', "
        "credentials: 'include', headers: {'Content-Type': "
        + repr(content_type)
        + "}, body: "
        + repr(body)
        + "}).then(() => document.title = 'sent', e => document.title = 'error ' + e)"
        "</script>"
    )


def landed(browser, prefix: str, timeout_s: float = 30) -> str:
    """Wait until an auto-submitted form has navigated to `prefix`; the text of the answer."""
    deadline = time.monotonic() + timeout_s
    while not browser.script(f"return location.href.startsWith({prefix!r}) "
                             "&& document.readyState === 'complete'"):  # fmt: skip
        assert time.monotonic() < deadline, browser.script("return location.href")
        time.sleep(0.1)
    return browser.script("return document.body.innerText")


def titled(browser, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while not browser.script("return document.title"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return browser.script("return document.title")


@needs_chromium
def test_cross_site_attempts_in_headless_chromium_are_all_refused(queued, tmp_path):  # noqa: F811
    cfg, lineage, run, _ = queued
    ids = items_by_row(lineage, run)
    port, evil_port = free_port(), free_port()
    target = f"http://127.0.0.1:{port}"
    evil = tmp_path / "evil"
    evil.mkdir()
    forged = {"decision": "edit", "content_0": "sys", "content_1": "q", "content_2": "PWNED",
              "reviewer": "mallory"}  # fmt: skip
    pages = {
        "form.html": auto_submit(f"{target}/items/{ids[2]}", forged),
        "plain-form.html": auto_submit(f"{target}/api/items/{ids[3]}",
                                       {'{"decision": "accept", "x": "': '"}'}, "text/plain"),
        "fetch-json.html": no_cors_fetch(f"{target}/api/items/{ids[3]}",
                                         '{"decision": "accept"}', "text/plain"),
        "fetch-form.html": no_cors_fetch(f"{target}/items/{ids[5]}", "decision=reject",
                                         "application/x-www-form-urlencoded"),
        "rebind.html": "<!doctype html><script>fetch('/api/items').then(r => r.text()).then("
                       "t => document.title = t.slice(0, 80))</script>",
    }  # fmt: skip
    for name, page in pages.items():
        (evil / name).write_text(page)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(evil))
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", evil_port), handler)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    rebind = "--host-resolver-rules=MAP rebind.test 127.0.0.1"
    try:
        with (
            review_server(cfg.workspace_dir, run, port, "--reviewer", "alice") as server,
            chromium(tmp_path / "profile", rebind) as browser,
        ):
            browser.get(server["alice"])  # the reviewer is signed in: the browser holds the cookie
            assert browser.text("#pending-count") == "3"
            refusals = {}
            # 1. a file:// page auto-submitting the form (Origin: null, no cookie: cross-site)
            browser.get((evil / "form.html").as_uri())
            refusals["file:// form"] = landed(browser, f"{target}/items/")
            # 2. the same form served from another localhost port (same-site: cookie sent)
            browser.get(f"http://127.0.0.1:{evil_port}/form.html")
            refusals["other-port form"] = landed(browser, f"{target}/items/")
            # 3. an enctype=text/plain form whose body reads as JSON
            browser.get(f"http://127.0.0.1:{evil_port}/plain-form.html")
            refusals["text/plain form"] = landed(browser, f"{target}/api/items/")
            # 4. no-cors fetches: the request reaches the server, the answer is opaque
            for name in ("fetch-json.html", "fetch-form.html"):
                browser.get(f"http://127.0.0.1:{evil_port}/{name}")
                assert titled(browser) == "sent"
            # 5. DNS rebinding: a page of rebind.test (now 127.0.0.1) reads its "own" origin
            browser.get(f"http://rebind.test:{port}/")
            refusals["rebinding"] = browser.text("#refused")
            unchanged(lineage, run)
            # the signed-in page itself still decides: the refusals are not a broken session
            browser.get(f"{target}/")
            browser.click_through(f"#accept-{ids[2]}")
            assert browser.text("#pending-count") == "2"
    finally:
        attacker.shutdown()
    assert "sign in first" in refusals["file:// form"]  # SameSite=Strict: no cookie from file://
    assert "cross-site request refused" in refusals["other-port form"]
    assert "cross-site request refused" in refusals["text/plain form"]
    assert "'rebind.test' is not served here" in refusals["rebinding"]
    queue = {r["source_row"]: r for r in lineage.review_items(run, None)}
    assert [queue[k]["status"] for k in (2, 3, 5)] == ["accepted", "pending", "pending"]
    assert queue[2]["reviewer"] == "alice" and queue[2]["final_record_id"] == queue[2]["record_id"]
    assert not re.search("PWNED|mallory", str(lineage.query("SELECT * FROM review_decisions")))
