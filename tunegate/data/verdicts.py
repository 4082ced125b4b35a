"""Verdicts: the fate of every input row, and the closed set of reason codes a rejection names.

Curation, the review and the lineage all speak in these types; they live with the data, not
with the database that stores them.
"""

from __future__ import annotations

from dataclasses import dataclass

REASON_CODES: dict[str, str] = {
    "schema": "row does not parse or breaks the record contract (file, line, field in detail)",
    "exact_duplicate": "same conversation as an earlier row after normalisation",
    "duplicate_response": "same answer (>= dedup.response_min_words words) as an earlier row "
    "with a different prompt",
    "near_duplicate": "MinHash Jaccard above the threshold with an earlier row",
    "contamination": "overlaps an eval item (13-gram or near-duplicate)",
    "template": "chat template fails, or content holds control tokens",
    "too_long": "rendered row exceeds max_seq_length (never truncated)",
    "synthetic_rejected": "synthetic row failed the automatic review heuristics",
    "review_rejected": "a human reviewer rejected the row",
    "review_pending": "flagged for human review, not (yet) accepted by a reviewer: not trained on",
    "double_bos": "(older runs) more than one BOS; now a once-per-run model finding",
    "template_parity": "generation prompt is not a token prefix of the training rendering",
    "stop_untrained": "an assistant turn's end-of-turn/EOS token is not a trained label",
    "loss_mask": "an assistant turn trains fewer than template.min_trained_tokens tokens",
}


@dataclass(frozen=True)
class Verdict:
    """The fate of one input row: accepted, or rejected with a reason code."""

    source: str
    source_row: int
    record_id: str | None
    stage: str
    status: str  # accepted | rejected
    reason: str | None = None
    detail: str | None = None
    duplicate_of: str | None = None  # `source:row` of the kept row this one duplicates
    cluster_id: str | None = None  # shared by all rows of one duplicate cluster
    eval_item: str | None = None  # the eval item a contaminated row overlaps
    raw: str | None = None  # the row as written in its file (kept for rejected rows)
