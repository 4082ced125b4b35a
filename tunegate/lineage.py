"""The lineage database: the only module that talks to DuckDB.

Every row, run, snapshot, adapter, eval and promotion is recorded here so a promoted
adapter can be traced back to the exact rows, config and evals behind it. Each write
is one transaction; the schema is versioned so an old workspace is refused, not misread.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

SCHEMA_VERSION = 1

REASON_CODES: dict[str, str] = {
    "schema": "row does not parse or breaks the record contract (file, line, field in detail)",
    "exact_duplicate": "same conversation as an earlier row after normalisation",
    "near_duplicate": "MinHash Jaccard above the threshold with an earlier row",
    "contamination": "overlaps an eval item (13-gram or near-duplicate)",
    "template": "chat template fails, or content holds control tokens",
    "too_long": "rendered row exceeds max_seq_length (never truncated)",
    "synthetic_rejected": "synthetic row failed the automatic review heuristics",
    "review_rejected": "a human reviewer rejected the row",
}

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
  run_id VARCHAR PRIMARY KEY, flow VARCHAR, config_hash VARCHAR, config_json VARCHAR,
  started_at TIMESTAMP, ended_at TIMESTAMP, status VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS stage_runs (
  run_id VARCHAR, stage VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP,
  status VARCHAR, metrics_json VARCHAR);
CREATE TABLE IF NOT EXISTS sources (
  run_id VARCHAR, path VARCHAR, sha256 VARCHAR, format VARCHAR, origin VARCHAR, n_rows BIGINT);
CREATE TABLE IF NOT EXISTS records (
  record_id VARCHAR PRIMARY KEY, messages_json VARCHAR, origin VARCHAR);
CREATE TABLE IF NOT EXISTS row_verdicts (
  run_id VARCHAR, source VARCHAR, source_row BIGINT, record_id VARCHAR, stage VARCHAR,
  status VARCHAR, reason VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS snapshots (
  snapshot_id VARCHAR PRIMARY KEY, run_id VARCHAR, n_records BIGINT, path VARCHAR,
  created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS snapshot_members (
  snapshot_id VARCHAR, position BIGINT, record_id VARCHAR);
CREATE TABLE IF NOT EXISTS base_models (
  sha256 VARCHAR PRIMARY KEY, ref VARCHAR, path VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS training_runs (
  training_run_id VARCHAR PRIMARY KEY, run_id VARCHAR, snapshot_id VARCHAR,
  config_hash VARCHAR, seed BIGINT, base_model_sha256 VARCHAR, started_at TIMESTAMP,
  ended_at TIMESTAMP, status VARCHAR, metrics_json VARCHAR);
CREATE TABLE IF NOT EXISTS train_log (
  training_run_id VARCHAR, step BIGINT, loss DOUBLE, learning_rate DOUBLE,
  tokens_per_s DOUBLE, logged_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS adapters (
  adapter_id VARCHAR PRIMARY KEY, training_run_id VARCHAR, path VARCHAR,
  base_model_sha256 VARCHAR, snapshot_id VARCHAR, config_hash VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS eval_results (
  run_id VARCHAR, subject VARCHAR, adapter_id VARCHAR, task VARCHAR, metric VARCHAR,
  value DOUBLE, stderr DOUBLE, n BIGINT, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS eval_samples (
  run_id VARCHAR, subject VARCHAR, adapter_id VARCHAR, task VARCHAR, item_id VARCHAR,
  prediction VARCHAR, target VARCHAR, score DOUBLE);
CREATE TABLE IF NOT EXISTS gate_results (
  run_id VARCHAR, adapter_id VARCHAR, gate VARCHAR, passed BOOLEAN, value DOUBLE,
  threshold DOUBLE, reason VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS promotions (
  promotion_id VARCHAR PRIMARY KEY, adapter_id VARCHAR, alias VARCHAR, decision VARCHAR,
  reason VARCHAR, actor VARCHAR, run_id VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS aliases (
  alias VARCHAR PRIMARY KEY, adapter_id VARCHAR, updated_at TIMESTAMP);
"""


class LineageError(RuntimeError):
    """The lineage database is unusable or a lookup failed."""


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


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


class Lineage:
    """Typed access to one lineage DuckDB file (or `:memory:` in tests)."""

    # DuckDB allows one writer process; inside it, Prefect's task threads share this lock.
    _lock = threading.RLock()

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._memory = duckdb.connect(":memory:") if self.path == ":memory:" else None
        with self._tx() as con:
            con.execute(_DDL)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            elif int(row[0]) != SCHEMA_VERSION:
                raise LineageError(
                    f"{self.path}: schema version {row[0]}, this tunegate reads {SCHEMA_VERSION}"
                )

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction on a short-lived connection (the file stays free between calls)."""
        with self._lock:
            con = self._memory or duckdb.connect(self.path)
            try:
                con.execute("BEGIN TRANSACTION")
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                if self._memory is None:
                    con.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Read rows as dicts (read-only SQL for reports and the CLI)."""
        with self._tx() as con:
            cur = con.execute(sql, list(params))
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    # -- runs ---------------------------------------------------------------------------
    def start_run(self, flow: str, config_hash: str, config_json: str, run_id: str | None = None) -> str:
        run_id = run_id or new_id("run")
        with self._tx() as con:
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, NULL, 'running', NULL)",
                [run_id, flow, config_hash, config_json, now()],
            )
        return run_id

    def end_run(self, run_id: str, status: str, detail: str | None = None) -> None:
        with self._tx() as con:
            con.execute(
                "UPDATE runs SET ended_at = ?, status = ?, detail = ? WHERE run_id = ?",
                [now(), status, detail, run_id],
            )

    def record_stage(
        self, run_id: str, stage: str, started_at: datetime, status: str, metrics: dict[str, Any]
    ) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO stage_runs VALUES (?, ?, ?, ?, ?, ?)",
                [run_id, stage, started_at, now(), status, json.dumps(metrics, default=str)],
            )

    # -- data ---------------------------------------------------------------------------
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
        table = _arrow(["record_id", "messages_json", "origin"], list(records))
        with self._tx() as con:
            con.register("new_records", table)
            con.execute(
                "INSERT INTO records SELECT DISTINCT ON (record_id) * FROM new_records "
                "WHERE record_id NOT IN (SELECT record_id FROM records)"
            )
            con.unregister("new_records")

    def record_verdicts(self, run_id: str, verdicts: Sequence[Verdict]) -> None:
        rows = [
            (run_id, v.source, v.source_row, v.record_id, v.stage, v.status, v.reason, v.detail)
            for v in verdicts
        ]
        cols = ["run_id", "source", "source_row", "record_id", "stage", "status", "reason", "detail"]
        table = _arrow(cols, rows)
        with self._tx() as con:
            con.register("new_verdicts", table)
            con.execute("INSERT INTO row_verdicts SELECT * FROM new_verdicts")
            con.unregister("new_verdicts")

    def verdict_counts(self, run_id: str) -> dict[str, int]:
        """Rows per status/reason for a run: the funnel, and the conservation check."""
        rows = self.query(
            "SELECT status, coalesce(reason, '') AS reason, count(*) AS n FROM row_verdicts "
            "WHERE run_id = ? GROUP BY ALL ORDER BY n DESC",
            [run_id],
        )
        return {(r["reason"] or r["status"]): r["n"] for r in rows}

    def record_snapshot(self, snapshot_id: str, run_id: str, path: str, record_ids: Sequence[str]) -> None:
        members = [(snapshot_id, i, rid) for i, rid in enumerate(record_ids)]
        with self._tx() as con:
            if con.execute("SELECT 1 FROM snapshots WHERE snapshot_id = ?", [snapshot_id]).fetchone():
                return  # same content, same snapshot: recorded once
            con.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?)",
                [snapshot_id, run_id, len(record_ids), path, now()],
            )
            con.register("members", _arrow(["snapshot_id", "position", "record_id"], members))
            con.execute("INSERT INTO snapshot_members SELECT * FROM members")
            con.unregister("members")

    # -- models and training ------------------------------------------------------------
    def record_base_model(self, sha256: str, ref: str, path: str) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO base_models VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [sha256, ref, path, now()],
            )

    def start_training(
        self, run_id: str, snapshot_id: str, config_hash: str, seed: int, base_sha: str
    ) -> str:
        training_run_id = new_id("train")
        with self._tx() as con:
            con.execute(
                "INSERT INTO training_runs VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 'running', NULL)",
                [training_run_id, run_id, snapshot_id, config_hash, seed, base_sha, now()],
            )
        return training_run_id

    def end_training(self, training_run_id: str, status: str, metrics: dict[str, Any]) -> None:
        with self._tx() as con:
            con.execute(
                "UPDATE training_runs SET ended_at = ?, status = ?, metrics_json = ? "
                "WHERE training_run_id = ?",
                [now(), status, json.dumps(metrics, default=str), training_run_id],
            )

    def record_train_log(
        self, training_run_id: str, step: int, loss: float, lr: float, tokens_per_s: float
    ) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO train_log VALUES (?, ?, ?, ?, ?, ?)",
                [training_run_id, step, loss, lr, tokens_per_s, now()],
            )

    def record_adapter(
        self,
        adapter_id: str,
        training_run_id: str,
        path: str,
        base_sha: str,
        snapshot_id: str,
        config_hash: str,
    ) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [adapter_id, training_run_id, path, base_sha, snapshot_id, config_hash, now()],
            )

    def adapter(self, adapter_id: str) -> dict[str, Any]:
        """One adapter row; a unique prefix of its id is enough, as with git."""
        rows = self.query(
            "SELECT * FROM adapters WHERE adapter_id LIKE ? || '%'", [adapter_id]
        )
        if len(rows) != 1:
            what = "no adapter" if not rows else f"{len(rows)} adapters"
            raise LineageError(f"{what} with id {adapter_id!r} in {self.path}")
        return rows[0]

    # -- evals, gates, promotions -------------------------------------------------------
    def record_eval(
        self,
        run_id: str,
        subject: str,
        adapter_id: str | None,
        task: str,
        metrics: dict[str, tuple[float, float | None]],
        n: int,
        samples: Sequence[tuple[str, str, str, float]] = (),
    ) -> None:
        """Metrics {name: (value, stderr)} plus per-sample (item, prediction, target, score)."""
        with self._tx() as con:
            for metric, (value, stderr) in metrics.items():
                con.execute(
                    "INSERT INTO eval_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, subject, adapter_id, task, metric, value, stderr, n, now()],
                )
            if samples:
                rows = [(run_id, subject, adapter_id, task, *s) for s in samples]
                cols = ["run_id", "subject", "adapter_id", "task", "item_id", "prediction",
                        "target", "score"]  # fmt: skip
                con.register("new_samples", _arrow(cols, rows))
                con.execute("INSERT INTO eval_samples SELECT * FROM new_samples")
                con.unregister("new_samples")

    def record_gate(
        self,
        run_id: str,
        adapter_id: str,
        gate: str,
        passed: bool,
        value: float,
        threshold: float,
        reason: str,
    ) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO gate_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, adapter_id, gate, passed, value, threshold, reason, now()],
            )

    def record_promotion(
        self, adapter_id: str, alias: str, decision: str, reason: str, actor: str, run_id: str | None
    ) -> str:
        """Record a promotion decision; a `promoted` decision also moves the alias."""
        promotion_id = new_id("promo")
        with self._tx() as con:
            con.execute(
                "INSERT INTO promotions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [promotion_id, adapter_id, alias, decision, reason, actor, run_id, now()],
            )
            if decision == "promoted":
                con.execute(
                    "INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", [alias, adapter_id, now()]
                )
        return promotion_id

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
                "SELECT gate, passed, value, threshold, reason FROM gate_results "
                "WHERE adapter_id = ? ORDER BY created_at", [aid]
            ),
            "promotions": self.query(
                "SELECT alias, decision, reason, actor, created_at FROM promotions "
                "WHERE adapter_id = ? ORDER BY created_at", [aid]
            ),
        }

    def alias_target(self, alias: str) -> str | None:
        rows = self.query("SELECT adapter_id FROM aliases WHERE alias = ?", [alias])
        return rows[0]["adapter_id"] if rows else None


def _arrow(columns: list[str], rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """Column-wise Arrow table: DuckDB inserts it in one go (executemany is row by row)."""
    data = list(zip(*rows, strict=True)) if rows else [[] for _ in columns]
    return pa.table({c: pa.array(list(v)) if rows else pa.array([], pa.string())
                     for c, v in zip(columns, data, strict=True)})
