"""`tunegate curate`: curation on its own, from the base model's tokenizer to a snapshot.

The pipeline flow (flows/pipeline.py, flows/review.py) runs the same first steps, but does
not call this: there each step is its own Prefect task (the base model with a retry, a stage
row, a log line and an artifact each), and between triage and the snapshot the flow pauses
for reviewers and closes the queue (`close_review`: the pending-row policy, edited rows
through the template gate again). Here nothing waits: queued rows stay `review_pending`,
out of this snapshot, for a reviewer and a later run.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunegate.chat import load_tokenizer
from tunegate.config import PipelineConfig
from tunegate.curation.run import CurationResult, curate
from tunegate.data.snapshot import Snapshot, snapshot_records
from tunegate.faults import fault_point
from tunegate.lineage import Lineage
from tunegate.models import prepare_base_model
from tunegate.review.triage import Triage, review_synthetic


@dataclass(frozen=True)
class CuratedRun:
    """What `curate_to_snapshot` produced: the rows that train, the triage, the snapshot."""

    result: CurationResult  # as curation returned it; its counts read the lineage (triage included)
    triage: Triage
    snapshot: Snapshot


def curate_to_snapshot(config: PipelineConfig, lineage: Lineage, run_id: str) -> CuratedRun:
    """Base model → curate (its tokenizer: the template gate) → synthetic triage → snapshot."""
    base = prepare_base_model(config, lineage)
    fault_point("base_model")
    tokenizer = load_tokenizer(base.path, config)
    triage = review_synthetic(config, lineage, run_id,
                              curate(config, lineage, run_id, tokenizer=tokenizer),
                              base.path)  # fmt: skip
    fault_point("curated")
    # the rows accepted now, as `tunegate train` takes them (`--snapshot`, default latest)
    snap = snapshot_records(config, lineage, run_id, triage.accepted)
    return CuratedRun(triage.curation, triage, snap)
