"""The synthetic-review stage: score synthetic rows, queue doubtful ones, close the queue.

How conservation holds while humans take their time (input rows = accepted + rejected, at
every instant, in the lineage DB):

1. curation records one verdict per input row; synthetic rows that pass the row checks are
   `accepted` there;
2. `review_synthetic` scores them: a reject flag rewrites the verdict to
   `rejected / synthetic_rejected`; a review flag queues the row and, in the same
   transaction, rewrites its verdict to `rejected / review_pending`: a row is never trained
   on until a human accepts it;
3. a reviewer's decision rewrites that one verdict again (accepted, possibly as an edited
   record, or `review_rejected`), in the same transaction as the decision;
4. `close_review` ends the queue when the flow resumes (or at once when `review.wait` is
   off): rows still pending stay `review_pending` (policy `reject_pending`) or fail the run
   (`fail`), and the training set is the accepted rows, reviewed ones included.

Decisions are kept per record id, so a later run reuses them (`review.reuse_decisions`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunegate.config import PipelineConfig
from tunegate.curation.checks.contract import contract_failures
from tunegate.curation.run import CurationResult, check_counts
from tunegate.data.records import Record
from tunegate.data.verdicts import Verdict
from tunegate.lineage import Lineage, LineageError
from tunegate.review.items import ReviewItem
from tunegate.review.scores import ACCEPTED, REJECTED, REVIEW, score_synthetic

STAGE = "synthetic"


class ReviewError(RuntimeError):
    """A decision that cannot be applied, or a queue closed with rows pending under `fail`."""


Key = tuple[str, int]  # (source, source row): one input row


class ReviewedRecords(Sequence[Record]):
    """Curation's accepted records as the review leaves them, in input order.

    A view, not a copy (curation may spool millions of rows to a file): rows in `drop`
    (rejected or pending synthetic rows) are skipped, rows in `replace` (accepted by a
    reviewer, possibly edited) stand in their original place.
    """

    def __init__(self, base: Sequence[Record], drop: set[Key], replace: dict[Key, Record]):
        self.base, self.drop, self.replace = base, set(drop), dict(replace)

    def __iter__(self) -> Iterator[Record]:
        for record in self.base:
            key = (record.source, record.source_row)
            if key in self.replace:
                yield self.replace[key]
            elif key not in self.drop:
                yield record

    def __len__(self) -> int:
        return len(self.base) - len(self.drop - self.replace.keys())

    def __getitem__(self, index):  # type: ignore[no-untyped-def,override]
        return list(self)[index]


@dataclass(frozen=True)
class Triage:
    """What the automatic review did to a curation result (left as curation returned it)."""

    curation: CurationResult
    accepted: Sequence[Record]  # curation's accepted rows less the rejected and pending ones
    scored: int
    rejected: int
    queued: list[str]  # review item ids
    reused: int  # queued rows decided at once from an earlier human decision

    @property
    def counts(self) -> dict[str, int]:
        return {"scored": self.scored, "synthetic_rejected": self.rejected,
                "queued": len(self.queued), "reused_decisions": self.reused}  # fmt: skip


def review_synthetic(
    config: PipelineConfig,
    lineage: Lineage,
    run_id: str,
    curation: CurationResult,
    model_dir: Path | None = None,
    tokenizer: Any = None,
) -> Triage:
    """Score the accepted synthetic rows; reject, queue for a human, or keep each one.

    Holds the synthetic rows and the human rows' shingles in memory (near copies are
    looked up among all human rows).
    """
    synthetic: list[Record] = []
    human: list[Record] = []
    if config.synthetic.enabled:
        for r in curation.accepted:
            (synthetic if r.origin == "synthetic" else human).append(r)
    if not synthetic:
        return Triage(curation, curation.accepted, 0, 0, [], 0)
    scored = score_synthetic(synthetic, human, config.synthetic, model_dir, tokenizer)
    del human
    lineage.record_synthetic_scores(run_id, [
        (s.record.source, s.record.source_row, s.record.record_id, s.outcome, s.flags, s.scores)
        for s in scored])  # fmt: skip
    rejected = [s for s in scored if s.outcome == REJECTED]
    _reject(lineage, run_id, STAGE, [
        (s.record, "synthetic_rejected", f"{s.record.source}:{s.record.source_row}: {s.detail}")
        for s in rejected])  # fmt: skip
    review = [s for s in scored if s.outcome == REVIEW]
    items = [ReviewItem(s.record.source, s.record.source_row, s.record.record_id, s.flags,
                        s.scores) for s in review]  # fmt: skip
    queued = lineage.enqueue_reviews(run_id, items)
    reused = _reuse_decisions(lineage, queued, review) if config.review.reuse_decisions else 0
    drop = {(s.record.source, s.record.source_row) for s in scored if s.outcome != ACCEPTED}
    accepted = ReviewedRecords(curation.accepted, drop, {})
    return Triage(curation, accepted, len(scored), len(rejected), queued, reused)


def _reject(
    lineage: Lineage, run_id: str, stage: str, rows: Sequence[tuple[Record, str, str]]
) -> None:
    """Rewrite recorded verdicts to `rejected` (record, reason, detail each): the one place the
    review changes a verdict outside a queue transaction (`Lineage.enqueue_reviews` and
    `decide_review` rewrite theirs atomically with the queue row)."""
    lineage.update_verdicts(run_id, [
        Verdict(r.source, r.source_row, r.record_id, stage, "rejected", reason, detail)
        for r, reason, detail in rows])  # fmt: skip


def _reuse_decisions(lineage: Lineage, item_ids: list[str], review: list[Any]) -> int:
    """Apply the latest human decision on the same record from an earlier run."""
    n = 0
    for item_id, score in zip(item_ids, review, strict=True):
        prior = lineage.prior_decision(score.record.record_id)
        if prior is None:
            continue
        edited = None
        if prior["edited_record_id"]:
            edited = (prior["edited_record_id"], prior["edited_messages_json"],
                      prior["edited_origin"] or "synthetic")  # fmt: skip
        note = f"reused decision {prior['decision_id']} of run {prior['run_id']}"
        lineage.decide_review(item_id, prior["decision"], prior["reviewer"], note, edited)
        n += 1
    return n


def decide(
    lineage: Lineage,
    item_id: str,
    decision: str,
    reviewer: str,
    note: str = "",
    edited_contents: list[str] | None = None,
) -> bool:
    """A reviewer's decision; `edit` = accept with new message contents (roles unchanged).

    Returns True when the run's verdict changed (False: the run's queue had closed, the
    decision is only kept for later runs).
    """
    item = review_item(lineage, item_id)
    edited = None
    if decision == "edit":
        decision = "accept"
        original = Record(_messages(item["messages_json"]), item["origin"] or "synthetic",
                          item["source"], item["source_row"])  # fmt: skip
        if edited_contents is None or len(edited_contents) != len(original.messages):
            raise ReviewError(f"an edit needs {len(original.messages)} message contents")
        messages = tuple(
            (r, c) for (r, _), c in zip(original.messages, edited_contents, strict=True)
        )
        if messages != original.messages:
            record = replace(original, messages=messages)
            failures = contract_failures(record)
            if failures:
                raise ReviewError(
                    "the edited row breaks the record contract: " + "; ".join(failures)
                )
            edited = (record.record_id, record.messages_json(), record.origin)
    if decision not in ("accept", "reject"):
        raise ReviewError(f"decision must be accept, reject or edit, not {decision!r}")
    try:
        return lineage.decide_review(item_id, decision, reviewer, note, edited)
    except LineageError as exc:
        raise ReviewError(str(exc)) from None


def review_item(lineage: Lineage, item_id: str) -> dict[str, Any]:
    """One queue row with its messages; an unknown id is a `ReviewError`."""
    try:
        return lineage.review_item(item_id)
    except LineageError as exc:
        raise ReviewError(str(exc)) from None


def close_review(
    config: PipelineConfig,
    lineage: Lineage,
    run_id: str,
    triage: Triage,
    *,
    why: str = "the review ended",
    checks: list[Any] | None = None,
) -> CurationResult:
    """End a run's queue and return the final training rows (reviewed ones included).

    `checks` (the template checks) re-validate edited rows: an edit must not smuggle in a
    control token or exceed max_seq_length.
    """
    pending = lineage.review_items(run_id, "pending")
    if pending and config.review.on_timeout == "fail":
        raise ReviewError(
            f"{len(pending)} row(s) still pending review when {why} (review.on_timeout = fail); "
            f"review them with `tunegate review serve` and run again"
        )
    if pending:
        lineage.expire_reviews(run_id, f"not reviewed: {why}")
    replace_rows: dict[Key, Record] = {}
    failed: list[tuple[Record, str, str]] = []
    for item in lineage.review_items(run_id, "accepted"):
        final = lineage.record(item["final_record_id"])
        record = Record(_messages(final["messages_json"]), final["origin"] or "synthetic",
                        item["source"], item["source_row"])  # fmt: skip
        edited = record.record_id != item["record_id"]
        failure = _first_failure(record, checks or []) if edited else None
        if failure is None:
            replace_rows[(record.source, record.source_row)] = record
        else:
            reason, detail = failure
            failed.append((record, reason, f"edited by {item['reviewer']}, then: {detail}"))
    _reject(lineage, run_id, "review", failed)
    accepted = triage.accepted
    if isinstance(accepted, ReviewedRecords):
        accepted = ReviewedRecords(accepted.base, accepted.drop,
                                   {**accepted.replace, **replace_rows})  # fmt: skip
    result = replace(triage.curation, accepted=accepted)  # verdicts: read from the lineage
    check_counts(
        config, lineage, run_id, result.n_input, len(result.accepted), after=" after review"
    )
    return result


def _first_failure(record: Record, checks: list[Any]) -> tuple[str, str] | None:
    for check in checks:
        detail = check(record)
        if detail is not None:
            return check.reason, detail
    return None


def _messages(messages_json: str) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"]) for m in json.loads(messages_json))
