"""The registry: gate verdicts, promotion decisions, and the aliases they move."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunegate.lineage.db import LineageDatabase, new_id, now

# Promotion decisions that move an alias (a `refused` one only records the attempt).
ALIAS_MOVES = ("promoted", "forced", "rollback")


class RegistryRecords(LineageDatabase):
    """The `gate_results`, `promotions` and `aliases` tables."""

    def record_gate(
        self,
        run_id: str,
        adapter_id: str,
        gate: str,
        passed: bool,
        value: float,
        threshold: float,
        reason: str,
        files_sha256: str | None = None,
        *,
        outcome: str | None = None,
        low: float | None = None,
        high: float | None = None,
        n_items: int | None = None,
        look: int | None = None,
        looks: int | None = None,
    ) -> None:
        """One gate's verdict; `files_sha256` is the digest of the adapter files it judged.

        `outcome` is pass, fail or inconclusive (default: from `passed`); `passed` is stored as
        "outcome is pass", so a reader that knows only pass/fail never takes inconclusive for
        pass. `low`/`high` are the confidence bounds, `n_items` the items the decision used,
        `look` of `looks` the sequential look it was read at (None: one fixed-size test).
        """
        outcome = outcome or ("pass" if passed else "fail")
        with self._tx() as con:
            con.execute(
                "INSERT INTO gate_results (run_id, adapter_id, gate, passed, value, threshold, "
                "reason, created_at, files_sha256, outcome, low, high, n_items, look, looks) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, adapter_id, gate, outcome == "pass", value, threshold, reason, now(),
                 files_sha256, outcome, low, high, n_items, look, looks],
            )  # fmt: skip

    def latest_gates(self, adapter_id: str) -> list[dict[str, Any]]:
        """The gate verdicts of the latest run that gated this adapter (empty: never gated),
        with the items each used and the sequential look it stopped at (look None: every
        item, one fixed-size test)."""
        return self.query(
            "SELECT run_id, gate, passed, coalesce(outcome, CASE WHEN passed THEN 'pass' "
            "ELSE 'fail' END) AS outcome, value, threshold, reason, files_sha256, created_at, "
            "n_items, look, looks "
            "FROM gate_results WHERE adapter_id = ? AND run_id = ("
            "  SELECT run_id FROM gate_results WHERE adapter_id = ? "
            "  ORDER BY created_at DESC LIMIT 1) ORDER BY created_at", [adapter_id, adapter_id]
        )  # fmt: skip

    def record_promotion(
        self,
        adapter_id: str,
        alias: str,
        decision: str,
        reason: str,
        actor: str,
        run_id: str | None,
        files_sha256: str | None = None,
        accepted_inconclusive: Sequence[str] = (),
    ) -> str:
        """Record a promotion decision; one in `ALIAS_MOVES` also moves the alias, and the
        adapter it pointed at before is kept with the decision (the alias's history).
        `accepted_inconclusive`: gates the alias's policy took although inconclusive."""
        promotion_id = new_id("promo")
        with self._tx() as con:
            row = con.execute("SELECT adapter_id FROM aliases WHERE alias = ?", [alias]).fetchone()
            con.execute(
                "INSERT INTO promotions (promotion_id, adapter_id, alias, decision, reason, actor, "
                "run_id, created_at, previous_adapter_id, files_sha256, accepted_inconclusive) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [promotion_id, adapter_id, alias, decision, reason, actor, run_id, now(),
                 row[0] if row else None, files_sha256,
                 ",".join(accepted_inconclusive) or None],
            )  # fmt: skip
            if decision in ALIAS_MOVES:
                con.execute(
                    "INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", [alias, adapter_id, now()]
                )
        return promotion_id

    def alias_history(self, alias: str) -> list[dict[str, Any]]:
        """Every decision about an alias, oldest first (refusals included)."""
        return self.query(
            "SELECT promotion_id, adapter_id, previous_adapter_id, decision, reason, actor, "
            "run_id, files_sha256, accepted_inconclusive, created_at FROM promotions "
            "WHERE alias = ? "
            "ORDER BY created_at, promotion_id", [alias]
        )  # fmt: skip

    def aliases(self) -> list[dict[str, Any]]:
        """Every alias with its adapter and the decision that put it there."""
        return self.query(
            "SELECT a.alias, a.adapter_id, a.updated_at, p.decision, p.actor, p.reason, "
            "p.files_sha256, p.accepted_inconclusive "
            "FROM aliases a LEFT JOIN promotions p ON p.promotion_id = ("
            "  SELECT promotion_id FROM promotions q WHERE q.alias = a.alias "
            "  AND q.adapter_id = a.adapter_id "
            "  AND q.decision IN ('promoted', 'forced', 'rollback') "
            "  ORDER BY created_at DESC LIMIT 1) ORDER BY a.alias"
        )  # fmt: skip

    def alias_target(self, alias: str) -> str | None:
        rows = self.query("SELECT adapter_id FROM aliases WHERE alias = ?", [alias])
        return rows[0]["adapter_id"] if rows else None
