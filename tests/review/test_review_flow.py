"""A flow with synthetic rows pending pauses, and resumes, on Prefect's temporary server.

The flow wires the real tasks the pipeline uses (`flows/pipeline.py`'s `curate_data` with the
template gate and the funnel artifact; `flows/review.py`: triage, the pause with
`pause_flow_run(wait_for_input=ReviewDone)`, closing the queue); only training is left out.
"""

from __future__ import annotations

import contextvars
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_conserved, make_config, write_jsonl
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.flow_runs import resume_flow_run

from flows.pipeline import curate_data
from flows.review import close_review_queue, triage_synthetic, wait_for_review
from tunegate.config import PipelineConfig
from tunegate.lineage import Lineage
from tunegate.models import BaseModel
from tunegate.review.triage import decide

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SYSTEM = "Classify the support ticket. Reply with JSON only."


def chat(user: str, answer: str, origin: str = "synthetic") -> dict:
    turns = [("system", SYSTEM), ("user", user), ("assistant", answer)]
    return {"messages": [{"role": r, "content": c} for r, c in turns], "origin": origin}


ROWS = [
    chat("My order A00001 has not arrived.", '{"intent": "shipping_delay"}', origin="human"),
    chat("Refund order B00001 please.", '{"intent": "refund"}'),
    chat("Cancel B00002.", '{"intent": "cancel_order"} I hope this helps!'),
    chat("I can't log in.", '{"intent": "account_access"} Feel free to ask more.'),
]


@flow(name="review-pause-test")
def review_flow(config: PipelineConfig, run_id: str, model_dir: str) -> dict[str, object]:
    """Curate → triage → pause while rows are pending → close the queue (the pipeline's order)."""
    lineage = Lineage(config.workspace_dir / "lineage.duckdb")
    base = BaseModel(ref=model_dir, path=Path(model_dir), sha256="test")  # renders the rows
    curation = curate_data(config, lineage, run_id, base)
    triage = triage_synthetic(config, lineage, run_id, curation, base)
    why = wait_for_review(config, lineage, run_id)
    result = close_review_queue(config, lineage, run_id, triage, base, why)  # re-checks edits
    return {"why": why, "accepted": [r.messages[1][1] for r in result.accepted]}


@pytest.fixture(scope="module")
def model(embedded_model_dir: Path) -> Path:
    """The embedded model: curation renders the rows with its tokenizer and chat template."""
    return embedded_model_dir


def setup(tmp_path: Path, **review: object) -> tuple[PipelineConfig, Lineage, str]:
    write_jsonl(tmp_path / "rows.jsonl", ROWS)
    review = {"wait": True, "poll_interval_s": 1, "timeout_s": 120, **review}
    cfg = make_config(tmp_path, [{"path": "rows.jsonl"}], review=review,
                      contracts={"batch_suite": None})  # fmt: skip
    lineage = Lineage(cfg.workspace_dir / "lineage.duckdb")
    return cfg, lineage, lineage.start_run("test", cfg.config_hash(), "{}")


def start(cfg: PipelineConfig, run_id: str, model: Path) -> tuple[threading.Thread, dict]:
    """Run the flow in a thread (inside this context: the harness's API settings)."""
    out: dict = {}

    def target() -> None:
        try:
            out["state"] = review_flow(cfg, run_id, str(model), return_state=True)
        except BaseException as exc:
            out["error"] = exc

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), daemon=True)
    thread.start()
    return thread, out


def paused_flow_run(timeout: float = 120):
    """The flow run once the server has it paused."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs() if r.state and r.state.is_paused()]
            if runs:
                return runs[0]
            time.sleep(0.5)
    pytest.fail("the flow never paused")


def counts(lineage: Lineage, run_id: str) -> dict[str, int]:
    return assert_conserved(lineage, run_id, len(ROWS))  # also while the flow is paused


def test_pending_rows_pause_the_flow_until_a_reviewer_resumes_it(prefect_server, model, tmp_path):
    cfg, lineage, run_id = setup(tmp_path, auto_resume=False)
    thread, out = start(cfg, run_id, model)
    paused = paused_flow_run()
    assert counts(lineage, run_id) == {"accepted": 2, "review_pending": 2}
    items = {i["source_row"]: i["item_id"] for i in lineage.review_items(run_id)}
    decide(lineage, items[3], "accept", "alice")
    decide(lineage, items[4], "reject", "bob")
    assert counts(lineage, run_id) == {"accepted": 3, "review_rejected": 1}
    time.sleep(2)
    assert thread.is_alive()  # no auto-resume: still paused although nothing is pending
    resume_flow_run(paused.id, run_input={"reviewer": "alice", "note": "queue done"})
    thread.join(timeout=120)
    assert "error" not in out, out.get("error")
    state = out["state"]
    assert state.is_completed(), state
    result = state.result()
    assert result["why"] == "alice resumed the run"
    assert result["accepted"] == ["My order A00001 has not arrived.", "Refund order B00001 please.",
                                  "Cancel B00002."]  # fmt: skip
    assert lineage.review_counts(run_id) == {"accepted": 1, "rejected": 1}
    with get_client(sync_client=True) as client:  # the curation task's funnel artifact
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["curation-funnel"]))
        )
    funnel = next(a.data for a in artifacts if a.flow_run_id == paused.id)
    assert "**4 input rows**" in funnel and "| accepted | 4 |" in funnel
    assert "| template_render | template |" in funnel  # the template gate ran with the tokenizer


def test_the_flow_resumes_by_itself_once_every_row_is_decided(prefect_server, model, tmp_path):
    cfg, lineage, run_id = setup(tmp_path)
    thread, out = start(cfg, run_id, model)
    paused = paused_flow_run()
    first, second = lineage.review_items(run_id)
    decide(lineage, first["item_id"], "accept", "carol")
    time.sleep(3)  # three polls with a row still pending: the flow stays paused
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(paused.id).state.is_paused()
    decide(lineage, second["item_id"], "edit", "carol",
           edited_contents=[SYSTEM, "I can't log in.", "ok<|im_end|>"])  # fmt: skip
    thread.join(timeout=120)
    assert "error" not in out, out.get("error")
    assert out["state"].is_completed()
    assert out["state"].result()["why"] == "tunegate resumed the run"
    assert counts(lineage, run_id) == {"accepted": 3, "template": 1}  # the edit failed at close


def test_nothing_pending_never_pauses(tmp_path):
    cfg, lineage, run_id = setup(tmp_path)  # review.wait on, nothing queued
    assert wait_for_review(cfg, lineage, run_id) == "nothing was pending"


def test_a_timeout_leaves_pending_rows_rejected(prefect_server, model, tmp_path):
    cfg, lineage, run_id = setup(tmp_path, timeout_s=3, auto_resume=False)
    thread, out = start(cfg, run_id, model)
    thread.join(timeout=120)
    assert "error" not in out, out.get("error")
    assert out["state"].result()["why"] == "the pause timed out after 3 s"
    assert counts(lineage, run_id) == {"accepted": 2, "review_pending": 2}
    assert lineage.review_counts(run_id) == {"expired": 2}


def test_a_timeout_fails_the_run_under_the_fail_policy(prefect_server, model, tmp_path):
    cfg, lineage, run_id = setup(tmp_path, timeout_s=3, auto_resume=False, on_timeout="fail")
    thread, out = start(cfg, run_id, model)
    thread.join(timeout=120)
    state = out.get("state")
    assert state is not None and state.is_failed(), out
    assert "2 row(s) still pending review" in str(state.message) + repr(out)
    assert counts(lineage, run_id) == {"accepted": 2, "review_pending": 2}


def test_without_review_wait_the_flow_does_not_pause(prefect_server, model, tmp_path):
    cfg, lineage, run_id = setup(tmp_path, wait=False)
    thread, out = start(cfg, run_id, model)
    thread.join(timeout=120)
    assert out["state"].result()["why"] == "review.wait is off"
    assert counts(lineage, run_id) == {"accepted": 2, "review_pending": 2}
