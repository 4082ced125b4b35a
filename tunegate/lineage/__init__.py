"""The lineage database: the only package that talks to DuckDB.

Every row, run, snapshot, adapter, eval and promotion is recorded here so a promoted
adapter can be traced back to the exact rows, config and evals behind it. `db` holds the
connection, schema and migrations; each area of the pipeline has its own module of typed
queries, and `Lineage` joins them into the one object callers use.
"""

from __future__ import annotations

from typing import Any

from tunegate.lineage.db import (
    SCHEMA_VERSION,
    LineageError,
    damaged_message,
    new_id,
    now,
    restore_lineage,
)
from tunegate.lineage.evals import EvalRecords
from tunegate.lineage.registry import ALIAS_MOVES, RegistryRecords
from tunegate.lineage.review_queue import ReviewQueue
from tunegate.lineage.runs import RunRecords
from tunegate.lineage.training import TrainingRecords
from tunegate.lineage.verdicts import VerdictRecords

__all__ = [
    "ALIAS_MOVES", "SCHEMA_VERSION", "Lineage", "LineageError", "damaged_message", "new_id",
    "now", "restore_lineage",
]  # fmt: skip


class Lineage(
    RunRecords, VerdictRecords, TrainingRecords, EvalRecords, RegistryRecords, ReviewQueue
):
    """Typed access to one lineage DuckDB file (or `:memory:` in tests), every area at once."""

    def chain(self, adapter_id: str) -> dict[str, Any]:
        """Everything behind an adapter: sources → snapshot → training → evals → promotions."""
        adapter = self.adapter(adapter_id)
        aid = adapter["adapter_id"]
        training = self.query(
            "SELECT t.*, b.ref AS base_model_ref FROM training_runs t "
            "LEFT JOIN base_models b ON b.sha256 = t.base_model_sha256 WHERE training_run_id = ?",
            [adapter["training_run_id"]],
        )
        snapshot = self.query(
            "SELECT * FROM snapshots WHERE snapshot_id = ?", [adapter["snapshot_id"]]
        )
        run_id = snapshot[0]["run_id"] if snapshot else None
        return {
            "adapter": adapter,
            "sources": self.query("SELECT * FROM sources WHERE run_id = ? ORDER BY path", [run_id]),
            "verdicts": self.verdict_counts(run_id) if run_id else {},
            "snapshot": snapshot[0] if snapshot else None,
            "training": training[0] if training else None,
            "evals": self.query(
                "SELECT subject, task, metric, value, stderr, n FROM eval_results "
                "WHERE run_id IN (SELECT run_id FROM eval_results WHERE adapter_id = ?) "
                "AND (adapter_id = ? OR subject = 'base') ORDER BY task, metric, subject",
                [aid, aid],
            ),
            "gates": self.query(
                "SELECT gate, outcome, value, threshold, reason FROM gate_results "
                "WHERE adapter_id = ? ORDER BY created_at",
                [aid],
            ),
            "promotions": self.query(
                "SELECT alias, decision, accepted_inconclusive, reason, actor, created_at "
                "FROM promotions "
                "WHERE adapter_id = ? ORDER BY created_at",
                [aid],
            ),
        }
