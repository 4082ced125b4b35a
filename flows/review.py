"""Review tasks of the pipeline flow: triage synthetic rows, wait for reviewers, close the queue.

The pipeline (flows/pipeline.py) calls these between curation and the snapshot. While rows
are pending and `review.wait` is on, the flow pauses with `pause_flow_run(wait_for_input=...)`:
reviewers decide at `tunegate review serve` (or offline with `tunegate review export/import`)
and resume the run from the Prefect UI, or it resumes by itself once nothing is pending.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.states import Running
from pydantic import Field

from tunegate.chat import load_tokenizer
from tunegate.config import PipelineConfig
from tunegate.curation.checks.template import template_checks
from tunegate.curation.run import CurationResult
from tunegate.lineage import Lineage, now
from tunegate.models import BaseModel
from tunegate.render import markdown_table
from tunegate.review.triage import Triage, close_review, review_synthetic
from tunegate.runlog import say, stage_line


class ReviewDone(RunInput):
    """The form a reviewer fills in the Prefect UI to resume the run."""

    reviewer: str = Field(description="Who closes the review.")
    note: str = Field("", description="Anything the run log should keep.")


@task(cache_policy=NO_CACHE)
def triage_synthetic(
    config: PipelineConfig, lineage: Lineage, run_id: str, curation: CurationResult,
    base: BaseModel | None,
) -> Triage:  # fmt: skip
    """Score synthetic rows: keep, reject (`synthetic_rejected`) or queue for a human."""
    started = now()
    triage = review_synthetic(config, lineage, run_id, curation, base.path if base else None)
    lineage.record_stage(run_id, "synthetic", started, "completed", triage.counts)
    if triage.scored:
        say(stage_line("synthetic", ", ".join(f"{k} {v}" for k, v in triage.counts.items())))
    if triage.scored:
        create_markdown_artifact(
            markdown_table(["synthetic rows", "n"], list(triage.counts.items())),
            key="synthetic-review", description="Automatic review of synthetic rows",
        )  # fmt: skip
    return triage


def wait_for_review(config: PipelineConfig, lineage: Lineage, run_id: str) -> str:
    """Pause the flow while rows are pending; returns why the wait ended.

    Called from the flow body (a pause belongs to the flow run, not to a task).
    """
    pending = lineage.review_counts(run_id).get("pending", 0)
    if not pending:
        return "nothing was pending"
    if not config.review.wait:
        return "review.wait is off"
    logger = get_run_logger()
    logger.warning("%d row(s) wait for review: `tunegate review serve --run %s`", pending, run_id)
    stop = threading.Event()
    if config.review.auto_resume:
        _start_auto_resume(lineage, run_id, config.review.poll_interval_s, stop)
    try:
        done = pause_flow_run(
            wait_for_input=ReviewDone, timeout=config.review.timeout_s,
            poll_interval=config.review.poll_interval_s, key=f"review-{run_id}",
        )  # fmt: skip
    except FlowPauseTimeout:
        _mark_running()  # the server still holds the run as paused; the flow goes on
        return f"the pause timed out after {config.review.timeout_s} s"
    finally:
        stop.set()
    logger.info("review closed by %s %s", done.reviewer, done.note)
    return f"{done.reviewer} resumed the run"


def _mark_running() -> None:
    """Take the flow run out of the expired pause, so the flow can go on to its policy."""
    flow_run_id = FlowRunContext.get().flow_run.id  # type: ignore[union-attr]
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Running(), force=True)


def _start_auto_resume(
    lineage: Lineage, run_id: str, interval: float, stop: threading.Event
) -> None:
    """Resume the paused flow run once no row is pending (polls the lineage DB)."""
    flow_run_id = FlowRunContext.get().flow_run.id  # type: ignore[union-attr]

    def watch() -> None:
        while not stop.wait(interval):
            if lineage.review_counts(run_id).get("pending", 0):
                continue
            try:
                done = {"reviewer": "tunegate", "note": "every queued row was decided"}
                resume_flow_run(flow_run_id, run_input=done)
                return
            except Exception:  # not paused yet, or the server is busy: try again next poll
                continue

    # The Prefect client settings live in context variables: run the thread inside a copy.
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(watch,), daemon=True, name="review-watch").start()


@task(cache_policy=NO_CACHE)
def close_review_queue(
    config: PipelineConfig, lineage: Lineage, run_id: str, triage: Triage,
    base: BaseModel | None, why: str,
) -> CurationResult:  # fmt: skip
    """End the queue (policy for pending rows) and return the rows that will train."""
    started = now()
    checks: list[Any] = []
    if base is not None and config.template.enabled:  # edited rows pass the template gate again
        checks = template_checks(config, load_tokenizer(base.path, config))
    result = close_review(config, lineage, run_id, triage, why=why, checks=checks)
    counts = lineage.review_counts(run_id)
    lineage.record_stage(run_id, "review", started, "completed", {**counts, "why": why})
    if counts:
        say(stage_line("review", ", ".join(f"{k} {v}" for k, v in counts.items()) + f" ({why})"))
    if counts:
        create_markdown_artifact(
            f"Review ended: {why}\n\n" + markdown_table(["queue", "rows"], list(counts.items())),
            key="human-review", description="Human review of synthetic rows",
        )  # fmt: skip
    return result
