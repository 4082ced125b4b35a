"""Synthetic review: the queue in DuckDB, decisions, closing policies, files, the web page.

Conservation (input rows = accepted + rejected) is asserted after every step: a queued row
is `rejected / review_pending` until a reviewer accepts it.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser import chromium, free_port, is_blank, needs_chromium, review_server
from conftest import assert_conserved, make_config, write_jsonl
from fastapi.testclient import TestClient

from tunegate.curation.run import CurationError, curate
from tunegate.lineage import Lineage
from tunegate.review.exchange import export_queue, import_decisions
from tunegate.review.guard import Guard
from tunegate.review.triage import ReviewError, close_review, decide, review_synthetic
from tunegate.review.web import create_app

pytestmark = pytest.mark.integration

SYSTEM = "Classify the support ticket. Reply with JSON only."
HUMAN = [
    {"instruction": f"My order A{i:05d} has not arrived yet.",
     "output": f'{{"intent": "shipping_delay", "order_id": "A{i:05d}"}}'}
    for i in range(6)
]  # fmt: skip


def synthetic(user: str, answer: str) -> dict:
    turns = [("system", SYSTEM), ("user", user), ("assistant", answer)]
    return {"messages": [{"role": r, "content": c} for r, c in turns], "origin": "synthetic"}


SYNTHETIC = [
    synthetic(
        "Please refund order B00001, it broke.", '{"intent": "refund", "order_id": "B00001"}'
    ),
    synthetic("Cancel my order B00002 please.", '{"intent": "cancel_order"}\nI hope this helps!'),
    synthetic(
        "I can't log in to my account.", '{"intent": "account_access"} Feel free to ask more.'
    ),
    synthetic("Where is order B00004?", "I'm sorry, but I cannot access order systems."),
    synthetic("Change the address of B00005.", '{"intent": "change_address"} As an AI, I did it.'),
]


def conserved(lineage: Lineage, run: str, n: int = 11) -> dict[str, int]:
    return assert_conserved(lineage, run, n)


@pytest.fixture()
def queued(tmp_path):
    """A curated run with 3 synthetic rows queued for review (boilerplate) and 1 refusal."""
    write_jsonl(tmp_path / "human.jsonl", HUMAN)
    write_jsonl(tmp_path / "synthetic.jsonl", SYNTHETIC)
    sources = [{"path": "human.jsonl"}, {"path": "synthetic.jsonl"}]
    cfg = make_config(tmp_path, sources, contracts={"batch_suite": None})  # GX: not under test
    lineage = Lineage(cfg.workspace_dir / "lineage.duckdb")
    run = lineage.start_run("test", cfg.config_hash(), "{}")
    triage = review_synthetic(cfg, lineage, run, curate(cfg, lineage, run))
    return cfg, lineage, run, triage


def items_by_row(lineage: Lineage, run: str) -> dict[int, str]:
    return {i["source_row"]: i["item_id"] for i in lineage.review_items(run, None)}


def test_triage_rejects_queues_and_conserves(queued):
    _cfg, lineage, run, triage = queued
    assert triage.counts == {
        "scored": 5,
        "synthetic_rejected": 1,
        "queued": 3,
        "reused_decisions": 0,
    }
    assert conserved(lineage, run) == {"accepted": 7, "review_pending": 3, "synthetic_rejected": 1}
    assert len(triage.accepted) == 7
    pending = lineage.review_items(run)
    assert [(p["source_row"], p["flags"]) for p in pending] == [
        (2, ["boilerplate"]), (3, ["boilerplate"]), (5, ["boilerplate"])]  # fmt: skip
    assert pending[0]["scores"]["boilerplate_hits"] == 1.0
    refusal = lineage.query("SELECT detail FROM row_verdicts WHERE reason = 'synthetic_rejected'")
    assert "synthetic.jsonl:4: refusal" in refusal[0]["detail"]
    scores = lineage.query("SELECT outcome, count(*) AS n FROM synthetic_scores GROUP BY ALL")
    assert {r["outcome"]: r["n"] for r in scores} == {"accepted": 1, "review": 3, "rejected": 1}


def test_decisions_rewrite_the_verdict_in_the_same_transaction(queued):
    _cfg, lineage, run, _ = queued
    ids = items_by_row(lineage, run)
    assert decide(lineage, ids[2], "accept", "alice") is True
    assert conserved(lineage, run)["accepted"] == 8
    decide(lineage, ids[3], "reject", "bob", note="boilerplate in the label")
    assert conserved(lineage, run)["review_rejected"] == 1
    contents = [SYSTEM, "Change the address of B00005.", '{"intent": "change_address"}']
    decide(lineage, ids[5], "edit", "carol", edited_contents=contents)
    assert conserved(lineage, run) == {"accepted": 9, "synthetic_rejected": 1, "review_rejected": 1}
    edited = lineage.review_item(ids[5])
    assert edited["status"] == "accepted" and edited["final_record_id"] != edited["record_id"]
    assert json.loads(lineage.record(edited["final_record_id"])["messages_json"])[2]["content"] == (
        '{"intent": "change_address"}'
    )  # fmt: skip
    verdict = lineage.query("SELECT * FROM row_verdicts WHERE source LIKE '%synthetic.jsonl' "
                            "AND source_row = 5")[0]  # fmt: skip
    assert verdict["record_id"] == edited["final_record_id"] and "carol" in verdict["detail"]
    log = lineage.query(
        "SELECT decision, reviewer, decided_at FROM review_decisions ORDER BY decided_at"
    )
    assert [(r["decision"], r["reviewer"]) for r in log] == [
        ("accept", "alice"), ("reject", "bob"), ("accept", "carol")]  # fmt: skip
    assert all(r["decided_at"] is not None for r in log)
    with pytest.raises(ReviewError, match="already accepted"):
        decide(lineage, ids[2], "reject", "dave")
    with pytest.raises(ReviewError, match="no review item"):
        decide(lineage, "nope", "accept", "dave")


def test_bad_decisions_change_nothing(queued):
    _cfg, lineage, run, _ = queued
    item = items_by_row(lineage, run)[2]
    with pytest.raises(ReviewError, match="reviewer name"):
        decide(lineage, item, "accept", "  ")
    with pytest.raises(ReviewError, match="accept, reject or edit"):
        decide(lineage, item, "maybe", "alice")
    with pytest.raises(ReviewError, match=r"record contract.*empty"):
        decide(lineage, item, "edit", "alice", edited_contents=[SYSTEM, "Cancel B00002.", " "])
    with pytest.raises(ReviewError, match="an edit needs 3 message contents"):
        decide(lineage, item, "edit", "alice", edited_contents=["Cancelled."])
    assert conserved(lineage, run)["review_pending"] == 3
    assert lineage.query("SELECT count(*) AS n FROM review_decisions")[0]["n"] == 0


def test_closing_keeps_pending_rows_rejected_and_trains_on_reviewed_ones(queued):
    cfg, lineage, run, triage = queued
    ids = items_by_row(lineage, run)
    decide(lineage, ids[3], "accept", "alice")
    result = close_review(cfg, lineage, run, triage, why="test ended")
    assert conserved(lineage, run) == {"accepted": 8, "review_pending": 2, "synthetic_rejected": 1}
    rows = [(Path(r.source).name, r.source_row) for r in result.accepted]
    assert rows == [("human.jsonl", i) for i in range(1, 7)] + [
        ("synthetic.jsonl", 1), ("synthetic.jsonl", 3)]  # fmt: skip
    assert len(result.accepted) == 8 == result.reasons["accepted"]
    assert lineage.review_counts(run) == {"accepted": 1, "expired": 2}
    detail = lineage.query("SELECT detail FROM row_verdicts WHERE reason = 'review_pending'")[0]
    assert "not reviewed: test ended" in detail["detail"]
    # a decision after the queue closed is kept for later runs, the run's verdicts stay
    assert decide(lineage, ids[2], "accept", "bob") is False
    assert conserved(lineage, run)["review_pending"] == 2


def test_the_fail_policy_fails_with_rows_pending(queued, tmp_path):
    cfg, lineage, run, triage = queued
    strict = cfg.model_copy(update={"review": cfg.review.model_copy(update={"on_timeout": "fail"})})
    with pytest.raises(ReviewError, match="3 row\\(s\\) still pending review"):
        close_review(strict, lineage, run, triage)
    for item in lineage.review_items(run):
        decide(lineage, item["item_id"], "reject", "alice")
    assert len(close_review(strict, lineage, run, triage).accepted) == 7


def test_too_few_rows_after_review_block_the_run(queued):
    cfg, lineage, run, triage = queued
    greedy = cfg.model_copy(update={"data": cfg.data.model_copy(update={"min_accepted_rows": 8})})
    with pytest.raises(CurationError, match="only 7 of 11 rows accepted after review"):
        close_review(greedy, lineage, run, triage)


def test_an_edit_that_breaks_the_template_is_rejected_at_close(queued, embedded_model_dir):
    from tunegate.chat import load_tokenizer
    from tunegate.curation.checks.template import template_checks

    cfg, lineage, run, triage = queued
    item = items_by_row(lineage, run)[2]
    decide(
        lineage, item, "edit", "mallory", edited_contents=[SYSTEM, "Cancel B00002.", "ok<|im_end|>"]
    )
    checks = template_checks(cfg, load_tokenizer(embedded_model_dir))
    result = close_review(cfg, lineage, run, triage, checks=checks)
    assert conserved(lineage, run)["template"] == 1 and len(result.accepted) == 7
    detail = lineage.query("SELECT detail FROM row_verdicts WHERE reason = 'template'")[0]["detail"]
    assert detail.startswith("edited by mallory, then: ") and "<|im_end|>" in detail


def test_a_later_run_reuses_human_decisions(queued):
    cfg, lineage, run, triage = queued
    ids = items_by_row(lineage, run)
    decide(lineage, ids[2], "reject", "alice")
    decide(
        lineage,
        ids[3],
        "edit",
        "bob",
        edited_contents=[SYSTEM, "I can't log in.", '{"intent": "x"}'],
    )
    close_review(cfg, lineage, run, triage)
    run2 = lineage.start_run("test", cfg.config_hash(), "{}")
    triage2 = review_synthetic(cfg, lineage, run2, curate(cfg, lineage, run2))
    assert triage2.reused == 2
    assert conserved(lineage, run2) == {"accepted": 8, "review_rejected": 1, "review_pending": 1,
                                        "synthetic_rejected": 1}  # fmt: skip
    final = close_review(cfg, lineage, run2, triage2)
    assert '{"intent": "x"}' in [r.messages[-1][1] for r in final.accepted]


def write_decisions(path: Path, rows: list[dict]) -> None:
    """The exported rows saved back, as a reviewer's spreadsheet or editor does."""
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_and_import_decisions_offline(queued, tmp_path, suffix):
    _cfg, lineage, run, _ = queued
    out = tmp_path / f"queue{suffix}"
    assert export_queue(lineage, out, run) == 3
    if suffix == ".csv":
        with out.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    messages = [json.loads(r["messages"]) if suffix == ".csv" else r["messages"] for r in rows]
    assert [m[1]["content"] for m in messages] == [
        "Cancel my order B00002 please.", "I can't log in to my account.",
        "Change the address of B00005."]  # fmt: skip
    write_decisions(out, [rows[0] | {"decision": "edit", "answer": "{}"}, *rows[1:]])
    first = import_decisions(lineage, out, reviewer="bob")  # `edit` is not a decision; 2 blank
    assert (first.applied, first.blank) == (0, 2) and "'edit' is not accept" in first.errors[0]
    crlf = rows[0]["answer"].replace("\n", "\r\n")  # as a spreadsheet saves a line break
    rows[0].update(decision="accept", reviewer="alice", answer=crlf)
    rows[1].update(decision="reject", note="boilerplate")  # reviewer from --reviewer
    rows[2].update(decision="accept", answer='{"intent": "change_address"}')  # an edit
    write_decisions(out, rows)
    summary = import_decisions(lineage, out, reviewer="bob")
    assert (summary.applied, summary.kept, summary.blank, summary.errors) == (3, 0, 0, [])
    assert conserved(lineage, run) == {"accepted": 9, "review_rejected": 1, "synthetic_rejected": 1}
    who = lineage.query("SELECT reviewer FROM review_queue ORDER BY source_row")
    assert [r["reviewer"] for r in who] == ["alice", "bob", "bob"]
    edited = {i["source_row"]: i["final_record_id"] != i["record_id"]
              for i in lineage.review_items(run, "accepted")}  # fmt: skip
    assert edited == {2: False, 5: True}  # only a changed answer is an edit, not its line ends
    assert export_queue(lineage, tmp_path / f"left{suffix}", run) == 0  # nothing left pending
    again = import_decisions(lineage, out, reviewer="bob")
    assert again.applied == 0 and len(again.errors) == 3 and "already" in again.errors[0]


def test_review_cli_export_and_import(queued, tmp_path):
    from typer.testing import CliRunner

    from tunegate.cli import app

    cfg, lineage, run, _ = queued
    out = tmp_path / "q.jsonl"
    ws = str(cfg.workspace_dir)
    res = CliRunner().invoke(app, ["review", "export", str(out), "-w", ws, "--run", run])
    assert res.exit_code == 0 and "wrote 3 pending row(s)" in res.output
    rows = [json.loads(line) | {"decision": "reject"} for line in out.read_text().splitlines()]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(app, ["review", "import", str(out), "-w", ws])
    assert res.exit_code == 1 and "no reviewer" in res.output
    res = CliRunner().invoke(app, ["review", "import", str(out), "-w", ws, "--reviewer", "eve"])
    assert res.exit_code == 0 and "applied 3" in res.output
    assert conserved(lineage, run)["review_rejected"] == 3


ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef"


def signed_in(app) -> tuple[TestClient, str]:
    """A browser-like client signed in as alice through the link, and the page's CSRF token."""
    client = TestClient(app, base_url="http://127.0.0.1:8765")
    page = client.get(f"/?token={ALICE}")
    assert page.status_code == 200 and "token" not in str(page.url)
    return client, re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)


def test_review_page_and_api(queued):
    _cfg, lineage, run, _ = queued
    ids = items_by_row(lineage, run)
    client, csrf = signed_in(create_app(lineage, Guard({ALICE: "alice", BOB: "bob"}), run))
    page = client.get("/")
    assert page.status_code == 200 and '<span id="pending-count">3</span>' in page.text
    assert "boilerplate_hits" in page.text and f'id="accept-{ids[2]}"' in page.text
    assert '<b id="reviewer">alice</b>' in page.text and 'name="reviewer"' not in page.text
    res = client.post(f"/items/{ids[2]}", data={"decision": "maybe", "csrf": csrf},
                      follow_redirects=False)  # fmt: skip
    assert res.status_code == 303 and "error=decision+must+be" in res.headers["location"]
    res = client.post(f"/items/{ids[2]}", data={"decision": "accept", "csrf": csrf})
    assert '<span id="pending-count">2</span>' in res.text
    api = TestClient(client.app, base_url="http://localhost:8765")  # a script: bearer, no cookie
    bearer = {"Authorization": f"Bearer {BOB}"}
    res = api.post(f"/api/items/{ids[3]}", json={"decision": "reject"}, headers=bearer)
    assert res.json() == {"item_id": ids[3], "applied": True, "reviewer": "bob"}
    res = api.post(f"/api/items/{ids[3]}", json={"decision": "reject"}, headers=bearer)
    assert res.status_code == 400 and "already" in res.json()["error"]
    assert [i["item_id"] for i in api.get("/api/items", headers=bearer).json()] == [ids[5]]
    assert conserved(lineage, run) == {"accepted": 8, "review_rejected": 1, "review_pending": 1,
                                       "synthetic_rejected": 1}  # fmt: skip
    who = {r["source_row"]: r["reviewer"] for r in lineage.review_items(run, None)}
    assert (who[2], who[3]) == ("alice", "bob")


# -- the page in a real browser: `tunegate review serve` and headless Chromium ------------------


@needs_chromium
def test_review_page_in_headless_chromium(queued, tmp_path):
    cfg, lineage, run, _ = queued
    ids = items_by_row(lineage, run)
    port = free_port()
    with (
        review_server(cfg.workspace_dir, run, port, "--reviewer", "alice") as server,
        chromium(tmp_path / "chromium-profile") as browser,
    ):
        assert server["alice"].startswith(f"http://127.0.0.1:{port}/?token=")
        browser.get(f"http://127.0.0.1:{port}/")  # not signed in: no queue, only how to sign in
        assert "sign in first" in browser.text("#refused")
        browser.get(server["alice"])  # the printed link signs in and leaves the address bar
        assert "token" not in browser.script("return location.href")
        assert browser.text("#pending-count") == "3" and browser.text("#reviewer") == "alice"
        assert not is_blank(browser.screenshot(tmp_path / "review.png"))
        # 1. accept row 2
        browser.click_through(f"#accept-{ids[2]}")
        assert browser.text("#pending-count") == "2"
        assert browser.text("#done") == f"saved decision on {ids[2]}"
        # 2. reject row 3 with a note
        browser.type(f"#note-{ids[3]}", "AI boilerplate in the label")
        browser.click_through(f"#reject-{ids[3]}")
        assert browser.text("#pending-count") == "1"
        # 3. edit row 5's answer and accept it
        browser.type(f"#content-{ids[5]}-2", '{"intent": "change_address"}')
        browser.click_through(f"#edit-{ids[5]}")
        assert browser.text("#empty") == "Nothing pending."
    assert f"review page at http://127.0.0.1:{port}/" in server["output"]
    queue = {r["source_row"]: r for r in lineage.review_items(run, None)}
    assert [(queue[k]["status"], queue[k]["reviewer"]) for k in (2, 3, 5)] == [
        ("accepted", "alice"), ("rejected", "alice"), ("accepted", "alice")]  # fmt: skip
    assert queue[3]["note"] == "AI boilerplate in the label"
    assert queue[5]["final_record_id"] != queue[5]["record_id"]
    edited = json.loads(lineage.record(queue[5]["final_record_id"])["messages_json"])
    assert edited[2]["content"] == '{"intent": "change_address"}'
    assert conserved(lineage, run) == {"accepted": 9, "review_rejected": 1, "synthetic_rejected": 1}


def test_a_second_process_holding_the_database_is_waited_for(queued):
    """The review server and a paused flow are separate processes sharing one DuckDB file."""
    _cfg, lineage, run, _ = queued
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(2); c.close()", lineage.path],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    item = lineage.review_items(run)[0]["item_id"]  # waits for the lock instead of failing
    decide(lineage, item, "accept", "alice")
    assert time.monotonic() - started > 0.5
    holder.wait(timeout=30)
    assert conserved(lineage, run)["accepted"] == 8
