"""Synthetic-row scores and the human review queue, with its decisions.

A queued row's verdict is `rejected / review_pending` from the moment it is queued, and
a decision rewrites that one verdict row in the same transaction, so input rows =
accepted + rejected holds at every instant, even while a flow is paused for review.
Which rows go to a human, and under which item id, is review policy (`tunegate.review`);
this module only stores it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tunegate.data.verdicts import Verdict
from tunegate.lineage.db import LineageDatabase, LineageError, arrow_table, new_id, now
from tunegate.lineage.verdicts import rewrite_verdict

if TYPE_CHECKING:  # review policy imports the lineage, not the other way round
    from tunegate.review.items import ReviewItem

# A synthetic row's scores: (source, row, record id, outcome, flags, scores).
ScoreRow = tuple[str, int, str, str, Sequence[str], dict[str, float]]


class ReviewQueue(LineageDatabase):
    """The `synthetic_scores`, `review_queue` and `review_decisions` tables."""

    def record_synthetic_scores(self, run_id: str, rows: Sequence[ScoreRow]) -> None:
        """Scores of every synthetic row: (source, row, record id, outcome, flags, scores)."""
        table = arrow_table(
            ["run_id", "source", "source_row", "record_id", "outcome", "flags", "scores_json"],
            [(run_id, src, row, rid, outcome, ",".join(flags), json.dumps(scores))
             for src, row, rid, outcome, flags, scores in rows],
        )  # fmt: skip
        with self._tx() as con:
            con.register("new_scores", table)
            con.execute("INSERT INTO synthetic_scores SELECT * FROM new_scores")
            con.unregister("new_scores")

    def enqueue_reviews(self, run_id: str, items: Sequence[ReviewItem]) -> list[str]:
        """Queue rows for review; their verdicts become `rejected / review_pending` atomically."""
        ids = []
        with self._tx() as con:
            for item in items:
                item_id = item.item_id(run_id)
                con.execute(
                    "INSERT INTO review_queue VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, NULL, "
                    "NULL, NULL, NULL)",
                    [item_id, run_id, item.source, item.source_row, item.record_id,
                     ",".join(item.flags), json.dumps(item.scores), now()],
                )  # fmt: skip
                detail = f"flags: {', '.join(item.flags)}; waiting for a reviewer (item {item_id})"
                rewrite_verdict(con, run_id, Verdict(
                    item.source, item.source_row, item.record_id, "review", "rejected",
                    "review_pending", detail))  # fmt: skip
                ids.append(item_id)
        return ids

    def review_items(
        self, run_id: str | None = None, status: str | None = "pending"
    ) -> list[dict[str, Any]]:
        """Queue rows with their messages (newest run first); `status=None` for all."""
        sql = (
            "SELECT q.*, r.messages_json, r.origin, u.started_at AS run_started_at "
            "FROM review_queue q LEFT JOIN records r ON r.record_id = q.record_id "
            "LEFT JOIN runs u ON u.run_id = q.run_id WHERE 1 = 1"
        )
        params: list[Any] = []
        if run_id is not None:
            sql += " AND q.run_id = ?"
            params.append(run_id)
        if status is not None:
            sql += " AND q.status = ?"
            params.append(status)
        rows = self.query(sql + " ORDER BY u.started_at DESC NULLS LAST, q.source, q.source_row",
                          params)  # fmt: skip
        for r in rows:
            r["scores"] = json.loads(r.pop("scores_json") or "{}")
            r["flags"] = [f for f in (r["flags"] or "").split(",") if f]
        return rows

    def review_item(self, item_id: str) -> dict[str, Any]:
        rows = [r for r in self.review_items(status=None) if r["item_id"] == item_id]
        if not rows:
            raise LineageError(f"no review item {item_id!r} in {self.path}")
        return rows[0]

    def decide_review(
        self,
        item_id: str,
        decision: str,
        reviewer: str,
        note: str = "",
        edited: tuple[str, str, str] | None = None,
    ) -> bool:
        """Record a reviewer's `accept` or `reject`; `edited` = (record id, messages json, origin).

        A pending row's verdict is rewritten in the same transaction (accepted, or
        `review_rejected`). A row whose run closed its queue (`expired`) keeps its verdict and
        only logs the decision, for later runs to reuse. Returns whether the run's verdict changed.
        """
        if decision not in ("accept", "reject"):
            raise LineageError(f"decision must be accept or reject, not {decision!r}")
        if not reviewer.strip():
            raise LineageError("a decision needs a reviewer name")
        if edited is not None and decision != "accept":
            raise LineageError("only an accepted row can be edited")
        with self._tx() as con:
            row = con.execute(
                "SELECT run_id, source, source_row, record_id, status FROM review_queue "
                "WHERE item_id = ?", [item_id]
            ).fetchone()  # fmt: skip
            if row is None:
                raise LineageError(f"no review item {item_id!r}")
            run_id, source, source_row, record_id, status = row
            if status not in ("pending", "expired"):
                raise LineageError(f"review item {item_id} is already {status}")
            final_id = edited[0] if edited else record_id
            if edited is not None:
                con.execute(
                    "INSERT INTO records VALUES (?, ?, ?) ON CONFLICT DO NOTHING", list(edited)
                )
            at = now()
            con.execute(
                "INSERT INTO review_decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [new_id("decision"), item_id, run_id, record_id, decision,
                 edited[0] if edited else None, reviewer, note, at],
            )  # fmt: skip
            if status == "expired":
                return False
            accepted = decision == "accept"
            con.execute(
                "UPDATE review_queue SET status = ?, decided_at = ?, reviewer = ?, "
                "final_record_id = ?, note = ? WHERE item_id = ?",
                ["accepted" if accepted else "rejected", at, reviewer,
                 final_id if accepted else None, note, item_id],
            )  # fmt: skip
            how = "accepted" if accepted else "rejected"
            how = f"edited into {final_id[:12]}" if edited else how
            detail = f"{how} by {reviewer}" + (f": {note}" if note else "")
            rewrite_verdict(con, run_id, Verdict(
                source, source_row, final_id, "review", "accepted" if accepted else "rejected",
                None if accepted else "review_rejected", detail))  # fmt: skip
            return True

    def prior_decision(self, record_id: str) -> dict[str, Any] | None:
        """The latest human decision on a record, from any run (for `review.reuse_decisions`)."""
        rows = self.query(
            "SELECT d.*, r.messages_json AS edited_messages_json, r.origin AS edited_origin "
            "FROM review_decisions d LEFT JOIN records r ON r.record_id = d.edited_record_id "
            "WHERE d.record_id = ? ORDER BY d.decided_at DESC LIMIT 1", [record_id]
        )  # fmt: skip
        return rows[0] if rows else None

    def expire_reviews(self, run_id: str, note: str) -> int:
        """Close a run's queue: pending rows stay rejected (`review_pending`), marked expired."""
        with self._tx() as con:
            n = con.execute(
                "UPDATE review_queue SET status = 'expired', note = ? "
                "WHERE run_id = ? AND status = 'pending'", [note, run_id]
            ).fetchone()  # fmt: skip
            con.execute(
                "UPDATE row_verdicts SET detail = detail || '; ' || ? WHERE run_id = ? "
                "AND reason = 'review_pending'", [note, run_id]
            )  # fmt: skip
        return int(n[0]) if n else 0

    def review_counts(self, run_id: str) -> dict[str, int]:
        rows = self.query(
            "SELECT status, count(*) AS n FROM review_queue WHERE run_id = ? GROUP BY status",
            [run_id],
        )
        return {r["status"]: r["n"] for r in rows}
