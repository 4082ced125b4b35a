"""Rows: source files, canonical records, one verdict per input row, snapshots, and the
report queries over them (funnel, rejected examples, duplicate pairs and clusters)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tunegate.data.verdicts import Verdict
from tunegate.lineage.db import LineageDatabase, LineageError, arrow_table, now

_VERDICT_COLUMNS: dict[str, pa.DataType] = {
    "run_id": pa.string(), "source": pa.string(), "source_row": pa.int64(),
    "record_id": pa.string(), "stage": pa.string(), "status": pa.string(),
    "reason": pa.string(), "detail": pa.string(), "duplicate_of": pa.string(),
    "cluster_id": pa.string(), "eval_item": pa.string(), "raw": pa.string(),
}  # fmt: skip


class VerdictRecords(LineageDatabase):
    """The `sources`, `records`, `row_verdicts`, `snapshots` and `snapshot_members` tables."""

    def record_source(
        self, run_id: str, path: str, sha256: str, fmt: str, origin: str, n_rows: int
    ) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?)",
                [run_id, path, sha256, fmt, origin, n_rows],
            )

    def record_records(self, records: Iterable[tuple[str, str, str]]) -> None:
        """Store canonical records (record_id, messages_json, origin); content-addressed."""
        table = arrow_table(["record_id", "messages_json", "origin"], list(records))
        with self._tx() as con:
            con.register("new_records", table)
            con.execute(
                "INSERT INTO records SELECT DISTINCT ON (record_id) * FROM new_records "
                "WHERE record_id NOT IN (SELECT record_id FROM records)"
            )
            con.unregister("new_records")

    def record_verdicts(self, run_id: str, verdicts: Sequence[Verdict]) -> None:
        """Append verdicts (curation writes them batch by batch, never all at once)."""
        fields = list(_VERDICT_COLUMNS)[1:]
        columns = {"run_id": [run_id] * len(verdicts)}
        columns.update({f: [getattr(v, f) for v in verdicts] for f in fields})
        table = pa.table({c: pa.array(columns[c], type=t) for c, t in _VERDICT_COLUMNS.items()})
        names = ", ".join(_VERDICT_COLUMNS)
        with self._tx() as con:
            con.register("new_verdicts", table)
            con.execute(f"INSERT INTO row_verdicts ({names}) SELECT {names} FROM new_verdicts")
            con.unregister("new_verdicts")

    def update_verdicts(self, run_id: str, verdicts: Sequence[Verdict]) -> None:
        """Replace the verdicts of rows already recorded (one row each: counts never change)."""
        with self._tx() as con:
            for v in verdicts:
                rewrite_verdict(con, run_id, v)

    def record(self, record_id: str) -> dict[str, Any]:
        """One stored record; a unique prefix of its id is enough."""
        rows = self.query("SELECT * FROM records WHERE record_id LIKE ? || '%'", [record_id])
        if len(rows) != 1:
            what = "no record" if not rows else f"{len(rows)} records"
            raise LineageError(f"{what} with id {record_id!r} in {self.path}")
        return rows[0]

    def source_verdicts(self, run_id: str, source: str) -> list[Verdict]:
        """One source file's verdicts in a run, in row order (every column)."""
        rows = self.query(
            f"SELECT {', '.join(list(_VERDICT_COLUMNS)[1:])} FROM row_verdicts "
            "WHERE run_id = ? AND source = ? ORDER BY source_row", [run_id, source]
        )  # fmt: skip
        return [Verdict(**r) for r in rows]

    def verdicts(self, run_id: str) -> list[Verdict]:
        """A run's verdicts, one per input row, in source order."""
        rows = self.query(
            "SELECT source, source_row, record_id, stage, status, reason, detail "
            "FROM row_verdicts WHERE run_id = ? ORDER BY source, source_row", [run_id]
        )  # fmt: skip
        return [Verdict(**r) for r in rows]

    def verdict_rows(
        self, run_id: str, reason: str | None = None, *, rejected_only: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """A run's verdicts in source order with every column and the record's messages
        (`tunegate verdicts`); `reason`: only that reason code."""
        sql = (
            "SELECT v.source, v.source_row, v.status, v.reason, v.detail, v.stage, "
            "v.duplicate_of, v.cluster_id, v.eval_item, v.raw, r.messages_json "
            "FROM row_verdicts v LEFT JOIN records r USING (record_id) WHERE v.run_id = ?"
        )
        params: list[Any] = [run_id]
        if reason:
            sql += " AND v.reason = ?"
            params.append(reason)
        if rejected_only:
            sql += " AND v.status = 'rejected'"
        sql += " ORDER BY v.source, v.source_row"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return self.query(sql, params)

    def conservation_counts(self, run_id: str) -> dict[str, int | None]:
        """A run's `verdicts` and `rows_in` (rows its sources held; None: none recorded):
        conservation holds when they are equal."""
        return self.query(
            "SELECT (SELECT count(*) FROM row_verdicts WHERE run_id = ?) AS verdicts, "
            "(SELECT sum(n_rows) FROM sources WHERE run_id = ?) AS rows_in",
            [run_id, run_id])[0]  # fmt: skip

    def verdicts_by_source(self, run_id: str) -> list[dict[str, Any]]:
        """Rows per source file and verdict (reason, or `accepted`)."""
        return self.query(
            "SELECT source, coalesce(reason, 'accepted') AS verdict, count(*) AS n "
            "FROM row_verdicts WHERE run_id = ? GROUP BY ALL ORDER BY source, n DESC", [run_id]
        )  # fmt: skip

    def rejected_examples(self, run_id: str, per_reason: int = 3) -> list[dict[str, Any]]:
        """The first rejected rows of each reason, with their messages when they parsed."""
        return self.query(
            "SELECT v.reason, v.source, v.source_row, v.detail, v.raw, v.duplicate_of, "
            "v.cluster_id, v.eval_item, r.messages_json FROM ("
            "  SELECT *, row_number() OVER (PARTITION BY reason ORDER BY source, source_row) AS k"
            "  FROM row_verdicts WHERE run_id = ? AND status = 'rejected') v "
            "LEFT JOIN records r USING (record_id) WHERE v.k <= ? ORDER BY v.reason, v.k",
            [run_id, per_reason],
        )

    def duplicate_pairs(self, run_id: str, reason: str, limit: int = 5) -> list[dict[str, Any]]:
        """Rejected duplicates next to the row they duplicate (both rows' messages)."""
        return self.query(
            "WITH d AS (SELECT * FROM row_verdicts WHERE run_id = ? AND reason = ? "
            "           ORDER BY source, source_row LIMIT ?) "
            "SELECT d.source, d.source_row, d.detail, d.cluster_id, d.duplicate_of, d.raw, "
            "r.messages_json, k.raw AS kept_raw, kr.messages_json AS kept_messages_json "
            "FROM d LEFT JOIN records r ON r.record_id = d.record_id "
            "LEFT JOIN row_verdicts k ON k.run_id = d.run_id "
            "  AND k.source || ':' || k.source_row = d.duplicate_of "
            "LEFT JOIN records kr ON kr.record_id = k.record_id "
            "ORDER BY d.source, d.source_row",
            [run_id, reason, limit],
        )

    def cluster_sizes(self, run_id: str) -> list[dict[str, Any]]:
        """Duplicate clusters of a run: id, reason, rejected copies (largest first)."""
        return self.query(
            "SELECT cluster_id, reason, count(*) AS copies, min(duplicate_of) AS kept "
            "FROM row_verdicts WHERE run_id = ? AND cluster_id IS NOT NULL "
            "GROUP BY ALL ORDER BY copies DESC, cluster_id", [run_id]
        )  # fmt: skip

    def verdict_counts(self, run_id: str) -> dict[str, int]:
        """Rows per status/reason for a run: the funnel, and the conservation check."""
        rows = self.query(
            "SELECT status, coalesce(reason, '') AS reason, count(*) AS n FROM row_verdicts "
            "WHERE run_id = ? GROUP BY ALL ORDER BY n DESC",
            [run_id],
        )
        return {(r["reason"] or r["status"]): r["n"] for r in rows}

    def record_snapshot(
        self, snapshot_id: str, run_id: str, path: str, record_ids: Sequence[str]
    ) -> None:
        members = [(snapshot_id, i, rid) for i, rid in enumerate(record_ids)]
        with self._tx() as con:
            if con.execute(
                "SELECT 1 FROM snapshots WHERE snapshot_id = ?", [snapshot_id]
            ).fetchone():
                return  # same content, same snapshot: recorded once
            con.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?)",
                [snapshot_id, run_id, len(record_ids), path, now()],
            )
            con.register("members", arrow_table(["snapshot_id", "position", "record_id"], members))
            con.execute("INSERT INTO snapshot_members SELECT * FROM members")
            con.unregister("members")

    def snapshot(self, ref: str | None = None) -> dict[str, Any]:
        """A snapshot by id prefix or file path; None: the latest one written."""
        if ref is None:
            rows = self.query("SELECT * FROM snapshots ORDER BY created_at DESC LIMIT 1")
        else:
            rows = self.query(
                "SELECT * FROM snapshots WHERE snapshot_id LIKE ? || '%' OR path = ?",
                [ref, str(Path(ref).resolve())],
            )
        if len(rows) != 1:
            what = "no snapshot" if not rows else f"{len(rows)} snapshots"
            raise LineageError(f"{what} matching {ref!r} in {self.path}")
        return rows[0]


def rewrite_verdict(con: duckdb.DuckDBPyConnection, run_id: str, v: Verdict) -> None:
    """Replace the one verdict of (run, source, row); anything but exactly one is a bug."""
    n = con.execute(
        "UPDATE row_verdicts SET record_id = ?, stage = ?, status = ?, reason = ?, detail = ? "
        "WHERE run_id = ? AND source = ? AND source_row = ?",
        [v.record_id, v.stage, v.status, v.reason, v.detail, run_id, v.source, v.source_row],
    ).fetchone()
    if not n or n[0] != 1:
        raise LineageError(
            f"{v.source}:{v.source_row} has {n[0] if n else 0} verdicts in run {run_id}, expected 1"
        )
