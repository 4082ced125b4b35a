"""Verdicts: the fate of every input row, and the reason codes that no curation check declares.

Curation, the review and the lineage all speak in these types; they live with the data, not
with the database that stores them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Reason codes no curation check declares: ingest's, the review's and older runs'. Each check
# declares its own code and meaning (`tunegate/curation/checks/`); `reason_codes()` there joins
# both into the closed, documented set.
OTHER_REASONS: dict[str, str] = {
    "schema": "row does not parse or breaks the record contract (file, line, field in detail)",
    "synthetic_rejected": "synthetic row failed the automatic review heuristics",
    "review_rejected": "a human reviewer rejected the row",
    "review_pending": "flagged for human review, not (yet) accepted by a reviewer: not trained on",
    "double_bos": "(older runs) more than one BOS; now a once-per-run model finding",
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
