"""The lineage database: the only module that talks to DuckDB.

Every row, run, snapshot, adapter, eval and promotion is recorded here so a promoted
adapter can be traced back to the exact rows, config and evals behind it. Each write
is one transaction; the schema is versioned so an old workspace is refused, not misread.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tunegate.data.verdicts import Verdict
from tunegate.process import Owner, current_owner, is_alive

SCHEMA_VERSION = 6  # 2: synthetic scores and the human review queue; 3: verdict matches, raw rows;
# 4: eval cache keys and per-sample prompts/scores, adapter file digests on gates and promotions
# 5: three-valued gates (outcome, bounds, items used), per-choice log-likelihoods per item
# 6: run owners' heartbeat (a run of another host is reaped when it stops beating)

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
  run_id VARCHAR PRIMARY KEY, flow VARCHAR, config_hash VARCHAR, config_json VARCHAR,
  started_at TIMESTAMP, ended_at TIMESTAMP, status VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS run_owners (
  run_id VARCHAR PRIMARY KEY, pid BIGINT, host VARCHAR, process_start VARCHAR,
  heartbeat TIMESTAMP);
CREATE TABLE IF NOT EXISTS stage_runs (
  run_id VARCHAR, stage VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP,
  status VARCHAR, metrics_json VARCHAR);
CREATE TABLE IF NOT EXISTS sources (
  run_id VARCHAR, path VARCHAR, sha256 VARCHAR, format VARCHAR, origin VARCHAR, n_rows BIGINT);
CREATE TABLE IF NOT EXISTS records (
  record_id VARCHAR PRIMARY KEY, messages_json VARCHAR, origin VARCHAR);
CREATE TABLE IF NOT EXISTS row_verdicts (
  run_id VARCHAR, source VARCHAR, source_row BIGINT, record_id VARCHAR, stage VARCHAR,
  status VARCHAR, reason VARCHAR, detail VARCHAR,
  duplicate_of VARCHAR, cluster_id VARCHAR, eval_item VARCHAR, raw VARCHAR);
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
CREATE TABLE IF NOT EXISTS train_eval_log (
  training_run_id VARCHAR, step BIGINT, eval_loss DOUBLE, logged_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS adapters (
  adapter_id VARCHAR PRIMARY KEY, training_run_id VARCHAR, path VARCHAR,
  base_model_sha256 VARCHAR, snapshot_id VARCHAR, config_hash VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS eval_results (
  run_id VARCHAR, subject VARCHAR, adapter_id VARCHAR, task VARCHAR, metric VARCHAR,
  value DOUBLE, stderr DOUBLE, n BIGINT, created_at TIMESTAMP, cache_key VARCHAR);
CREATE TABLE IF NOT EXISTS eval_samples (
  run_id VARCHAR, subject VARCHAR, adapter_id VARCHAR, task VARCHAR, item_id VARCHAR,
  prediction VARCHAR, target VARCHAR, score DOUBLE,
  metric VARCHAR, prompt VARCHAR, scores_json VARCHAR, choice_logliks_json VARCHAR);
CREATE TABLE IF NOT EXISTS gate_results (
  run_id VARCHAR, adapter_id VARCHAR, gate VARCHAR, passed BOOLEAN, value DOUBLE,
  threshold DOUBLE, reason VARCHAR, created_at TIMESTAMP, files_sha256 VARCHAR,
  outcome VARCHAR, low DOUBLE, high DOUBLE, n_items BIGINT);
CREATE TABLE IF NOT EXISTS promotions (
  promotion_id VARCHAR PRIMARY KEY, adapter_id VARCHAR, alias VARCHAR, decision VARCHAR,
  reason VARCHAR, actor VARCHAR, run_id VARCHAR, created_at TIMESTAMP,
  previous_adapter_id VARCHAR, files_sha256 VARCHAR, accepted_inconclusive VARCHAR);
CREATE TABLE IF NOT EXISTS aliases (
  alias VARCHAR PRIMARY KEY, adapter_id VARCHAR, updated_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS synthetic_scores (
  run_id VARCHAR, source VARCHAR, source_row BIGINT, record_id VARCHAR, outcome VARCHAR,
  flags VARCHAR, scores_json VARCHAR);
CREATE TABLE IF NOT EXISTS review_queue (
  item_id VARCHAR PRIMARY KEY, run_id VARCHAR, source VARCHAR, source_row BIGINT,
  record_id VARCHAR, flags VARCHAR, scores_json VARCHAR, status VARCHAR, queued_at TIMESTAMP,
  decided_at TIMESTAMP, reviewer VARCHAR, final_record_id VARCHAR, note VARCHAR);
CREATE TABLE IF NOT EXISTS review_decisions (
  decision_id VARCHAR PRIMARY KEY, item_id VARCHAR, run_id VARCHAR, record_id VARCHAR,
  decision VARCHAR, edited_record_id VARCHAR, reviewer VARCHAR, note VARCHAR,
  decided_at TIMESTAMP);
"""

# SQL that takes a lineage file from version N to N + 1 (tables new in N + 1 come from _DDL).
_MIGRATIONS: dict[int, str] = {
    2: "ALTER TABLE row_verdicts ADD COLUMN IF NOT EXISTS duplicate_of VARCHAR; "
    "ALTER TABLE row_verdicts ADD COLUMN IF NOT EXISTS cluster_id VARCHAR; "
    "ALTER TABLE row_verdicts ADD COLUMN IF NOT EXISTS eval_item VARCHAR; "
    "ALTER TABLE row_verdicts ADD COLUMN IF NOT EXISTS raw VARCHAR;",
}
_MIGRATIONS[1] = _MIGRATIONS[2]  # 1 -> 2 only added tables; adding the columns twice is a no-op
_MIGRATIONS[3] = (
    "ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS cache_key VARCHAR; "
    "ALTER TABLE eval_samples ADD COLUMN IF NOT EXISTS metric VARCHAR; "
    "ALTER TABLE eval_samples ADD COLUMN IF NOT EXISTS prompt VARCHAR; "
    "ALTER TABLE eval_samples ADD COLUMN IF NOT EXISTS scores_json VARCHAR; "
    "ALTER TABLE gate_results ADD COLUMN IF NOT EXISTS files_sha256 VARCHAR; "
    "ALTER TABLE promotions ADD COLUMN IF NOT EXISTS previous_adapter_id VARCHAR; "
    "ALTER TABLE promotions ADD COLUMN IF NOT EXISTS files_sha256 VARCHAR;"
)
# 5: gate_results.passed stays "outcome is pass" for readers that only know pass/fail.
_MIGRATIONS[4] = (
    "ALTER TABLE eval_samples ADD COLUMN IF NOT EXISTS choice_logliks_json VARCHAR; "
    "ALTER TABLE gate_results ADD COLUMN IF NOT EXISTS outcome VARCHAR; "
    "ALTER TABLE gate_results ADD COLUMN IF NOT EXISTS low DOUBLE; "
    "ALTER TABLE gate_results ADD COLUMN IF NOT EXISTS high DOUBLE; "
    "ALTER TABLE gate_results ADD COLUMN IF NOT EXISTS n_items BIGINT; "
    "ALTER TABLE promotions ADD COLUMN IF NOT EXISTS accepted_inconclusive VARCHAR; "
    "UPDATE gate_results SET outcome = CASE WHEN passed THEN 'pass' ELSE 'fail' END "
    "WHERE outcome IS NULL;"
)
_MIGRATIONS[5] = "ALTER TABLE run_owners ADD COLUMN IF NOT EXISTS heartbeat TIMESTAMP;"
# Promotion decisions that move an alias (a `refused` one only records the attempt).
ALIAS_MOVES = ("promoted", "forced", "rollback")

_VERDICT_COLUMNS: dict[str, pa.DataType] = {
    "run_id": pa.string(), "source": pa.string(), "source_row": pa.int64(),
    "record_id": pa.string(), "stage": pa.string(), "status": pa.string(),
    "reason": pa.string(), "detail": pa.string(), "duplicate_of": pa.string(),
    "cluster_id": pa.string(), "eval_item": pa.string(), "raw": pa.string(),
}  # fmt: skip


class LineageError(RuntimeError):
    """The lineage database is unusable or a lookup failed."""


# A synthetic row's scores: (source, row, record id, outcome, flags, scores).
ScoreRow = tuple[str, int, str, str, Sequence[str], dict[str, float]]


@dataclass(frozen=True)
class ReviewItem:
    """A synthetic row waiting for a human: where it came from, its scores and flags."""

    source: str
    source_row: int
    record_id: str
    flags: tuple[str, ...]
    scores: dict[str, float]

    def item_id(self, run_id: str) -> str:
        """Stable short id of this row in this run (what URLs and exports use)."""
        key = f"{run_id}\x1f{self.source}\x1f{self.source_row}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


class Lineage:
    """Typed access to one lineage DuckDB file (or `:memory:` in tests)."""

    # DuckDB allows one writer process; inside it, Prefect's task threads share this lock.
    _lock = threading.RLock()

    def __init__(self, path: str | Path, read_only: bool = False):
        """Open (or create) the lineage file. It is first checked whole and of a known schema
        version; a damaged one is refused (`LineageError` with the way out), so nothing writes
        into it. `read_only` opens without DDL or migration: readers work on a read-only copy."""
        self.path = str(path)
        self.read_only = read_only
        self._memory = duckdb.connect(":memory:") if self.path == ":memory:" else None
        if self._memory is None:
            if read_only and not Path(self.path).is_file():
                raise LineageError(f"{self.path}: no lineage database")
            if Path(self.path).is_file() and Path(self.path).stat().st_size > 0:
                problem = self.damage()
                if problem:  # a reader too: its answers would be partial, or a traceback
                    raise LineageError(damaged_message(self.path, problem))
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if read_only:
            version = self.query("SELECT value FROM meta WHERE key = 'schema_version'")
            if not version or int(version[0]["value"]) != SCHEMA_VERSION:
                found = version[0]["value"] if version else "none"
                raise LineageError(
                    f"{self.path}: schema version {found}, this tunegate reads {SCHEMA_VERSION} "
                    "(a writing command migrates an older file)"
                )
            return
        with self._tx() as con:
            con.execute(_DDL)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            elif int(row[0]) < SCHEMA_VERSION:
                for version in range(int(row[0]), SCHEMA_VERSION):
                    con.execute(_MIGRATIONS.get(version, "SELECT 1"))
                con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                            [str(SCHEMA_VERSION)])  # fmt: skip
            elif int(row[0]) != SCHEMA_VERSION:
                raise LineageError(
                    f"{self.path}: schema version {row[0]}, this tunegate reads {SCHEMA_VERSION}"
                )

    # -- integrity, backup ------------------------------------------------------------------
    @classmethod
    def unchecked(cls, path: str | Path) -> Lineage:
        """The file as it is, read-only, with no check, DDL or version test: what `db check`
        and `db backup` need to look at (and save what they can of) a damaged file."""
        lineage = cls.__new__(cls)
        lineage.path, lineage.read_only, lineage._memory = str(path), True, None
        return lineage

    def damage(self, deep: bool = False) -> str | None:
        """Why the file is damaged, or None. Always: it opens, and every block its tables use
        lies inside the file (a truncated copy fails here); `deep`: every block of every table
        is read, so DuckDB verifies each block's checksum (slow on a big file: `db check
        --deep`)."""
        with self._lock:  # no read-write connection of this process is open meanwhile
            return self._damage(deep)

    def _damage(self, deep: bool) -> str | None:
        try:
            con = _connect(self.path, read_only=True)
        except duckdb.Error as exc:
            if "lock" in str(exc).lower():  # busy (another process writes), not damaged
                raise LineageError(f"{self.path} is held by another process: {exc}") from None
            return f"it does not open ({exc})"
        try:
            (block,) = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()
            tables = [
                r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            ]
            last = con.execute(" UNION ALL ".join(
                f"SELECT max(block_id) FROM pragma_storage_info('{t}')" for t in tables
            )).fetchall() if tables else []  # fmt: skip
            top = max((r[0] for r in last if r[0] is not None), default=-1)
            need, size = _HEADER_BYTES + block * (top + 1), Path(self.path).stat().st_size
            wal = Path(self.path + ".wal")  # not yet checkpointed: blocks may live there only
            if size < need and not (wal.is_file() and wal.stat().st_size > 0):
                return (f"it is {size:,} bytes, but its tables use blocks up to byte {need:,}: "
                        "the file was cut short")  # fmt: skip
            if deep:
                for table in tables:
                    # hashing each whole row reads every column's blocks, inside DuckDB
                    con.execute(f'SELECT bit_xor(hash(t)) FROM "{table}" AS t').fetchone()
        except duckdb.Error as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            con.close()
        return None

    def backup(self, out: Path) -> dict[str, Any]:
        """Every table to `out/<table>.parquet` plus `backup.json` (schema version, rows per
        table). A table that cannot be read is listed under `unreadable`, the rest still saved:
        from a damaged file this saves what can be saved."""
        out.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "tables": {},
                                   "unreadable": {}, "source": self.path}  # fmt: skip
        with self._lock:
            con = self._memory or _connect(self.path, read_only=True)
            try:
                tables = [r[0] for r in con.execute(
                    "SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]  # fmt: skip
                version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                summary["schema_version"] = int(version.fetchone()[0])
                for table in tables:
                    target = out / f"{table}.parquet"
                    try:
                        con.execute(f"COPY (SELECT * FROM \"{table}\") TO '{target}' "
                                    "(FORMAT PARQUET)")  # fmt: skip
                        n = con.execute(f"SELECT count(*) FROM '{target}'").fetchone()[0]
                        summary["tables"][table] = n
                    except duckdb.Error as exc:
                        target.unlink(missing_ok=True)
                        summary["unreadable"][table] = str(exc)
            finally:
                if self._memory is None:
                    con.close()
        (out / "backup.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction on a short-lived connection (the file stays free between calls)."""
        with self._lock:
            con = self._memory or _connect(self.path, read_only=self.read_only)
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
    def start_run(
        self, flow: str, config_hash: str, config_json: str, run_id: str | None = None
    ) -> str:
        run_id = run_id or new_id("run")
        owner = current_owner()  # so the next command can tell a killed run from a live one
        with self._tx() as con:
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, NULL, 'running', NULL)",
                [run_id, flow, config_hash, config_json, now()],
            )
            con.execute("INSERT INTO run_owners (run_id, pid, host, process_start) "
                        "VALUES (?, ?, ?, ?)",
                        [run_id, owner.pid, owner.host, owner.start])  # fmt: skip
        return run_id

    def end_run(self, run_id: str, status: str, detail: str | None = None) -> None:
        with self._tx() as con:
            con.execute(
                "UPDATE runs SET ended_at = ?, status = ?, detail = ? WHERE run_id = ?",
                [now(), status, detail, run_id],
            )

    def unfinished_runs(self) -> list[dict[str, Any]]:
        """Runs still `running`, oldest first, with their owner (`alive`: True, False, or None
        when the owner is on another host or unknown), its last heartbeat (None: it never
        beat) and the verdicts they wrote so far."""
        rows = self.query(
            "SELECT r.run_id, r.flow, r.started_at, o.pid, o.host, o.process_start, o.heartbeat, "
            "(SELECT count(*) FROM row_verdicts v WHERE v.run_id = r.run_id) AS verdicts "
            "FROM runs r LEFT JOIN run_owners o USING (run_id) WHERE r.status = 'running' "
            "ORDER BY r.started_at"
        )
        for r in rows:
            r["alive"] = None if r["pid"] is None else is_alive(
                Owner(int(r["pid"]), r["host"], r["process_start"]))  # fmt: skip
        return rows

    def latest_finished_run(self, with_verdicts: bool = True) -> dict[str, Any] | None:
        """The newest run that ended (completed, failed, promoted, refused): never one that
        is still running or was abandoned, whose verdicts are partial."""
        sql = ("SELECT run_id, status, started_at FROM runs WHERE status NOT IN "
               "('running', 'abandoned')")  # fmt: skip
        if with_verdicts:
            sql += " AND run_id IN (SELECT DISTINCT run_id FROM row_verdicts)"
        rows = self.query(sql + " ORDER BY started_at DESC LIMIT 1")
        return rows[0] if rows else None

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

    def source_verdicts(self, run_id: str, source: str) -> list[Verdict]:
        """One source file's verdicts in a run, in row order (every column)."""
        rows = self.query(
            f"SELECT {', '.join(list(_VERDICT_COLUMNS)[1:])} FROM row_verdicts "
            "WHERE run_id = ? AND source = ? ORDER BY source_row", [run_id, source]
        )  # fmt: skip
        return [Verdict(**r) for r in rows]

    def verdict_funnel(self, run_id: str) -> list[dict[str, Any]]:
        """Rows per deciding stage and reason (accepted rows under status `accepted`)."""
        return self.query(
            "SELECT stage, status, coalesce(reason, 'accepted') AS reason, count(*) AS n "
            "FROM row_verdicts WHERE run_id = ? GROUP BY ALL ORDER BY n DESC", [run_id]
        )  # fmt: skip

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

    def base_model(self, sha256: str) -> dict[str, Any]:
        """The base model recorded under this weights hash (ref and local path)."""
        rows = self.query("SELECT * FROM base_models WHERE sha256 = ?", [sha256])
        if not rows:
            raise LineageError(f"no base model with sha256 {sha256[:12]} in {self.path}")
        return rows[0]

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

    def record_eval_loss(self, training_run_id: str, step: int, eval_loss: float) -> None:
        """Loss on the held-out validation rows, measured every `train.eval_steps` steps."""
        with self._tx() as con:
            con.execute(
                "INSERT INTO train_eval_log VALUES (?, ?, ?, ?)",
                [training_run_id, step, eval_loss, now()],
            )

    def loss_curve(self, training_run_id: str) -> list[dict[str, Any]]:
        """Train and eval loss by step, for plots: one row per step that has either."""
        return self.query(
            "SELECT step, t.loss, e.eval_loss FROM "
            "(SELECT step, loss FROM train_log WHERE training_run_id = ?) t "
            "FULL JOIN (SELECT step, eval_loss FROM train_eval_log WHERE training_run_id = ?) e "
            "USING (step) ORDER BY step",
            [training_run_id, training_run_id],
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
        rows = self.query("SELECT * FROM adapters WHERE adapter_id LIKE ? || '%'", [adapter_id])
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
        samples: Sequence[Sequence[Any]] = (),
        *,
        metric: str | None = None,
        cache_key: str | None = None,
    ) -> None:
        """Metrics {name: (value, stderr)} plus per-sample rows (item, prediction, target,
        score[, {metric: value}, prompt]); `metric` names what `score` holds, `cache_key` what
        the scores depend on (a later run may reuse a base model's scores with the same key)."""
        with self._tx() as con:
            for name, (value, stderr) in metrics.items():
                con.execute(
                    "INSERT INTO eval_results (run_id, subject, adapter_id, task, metric, value, "
                    "stderr, n, created_at, cache_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, subject, adapter_id, task, name, value, stderr, n, now(), cache_key],
                )
            if samples:
                rows = []
                for item_id, prediction, target, score, *rest in samples:
                    scores = json.dumps(rest[0]) if rest else None
                    prompt = rest[1] if len(rest) > 1 else None
                    lls = json.dumps(list(rest[2])) if len(rest) > 2 and rest[2] else None
                    rows.append((run_id, subject, adapter_id, task, str(item_id), str(prediction),
                                 str(target), float(score), metric, prompt, scores,
                                 lls))  # fmt: skip
                cols = ["run_id", "subject", "adapter_id", "task", "item_id", "prediction",
                        "target", "score", "metric", "prompt", "scores_json",
                        "choice_logliks_json"]  # fmt: skip
                con.register("new_samples", _arrow(cols, rows))
                con.execute(f"INSERT INTO eval_samples ({', '.join(cols)}) "
                            f"SELECT {', '.join(cols)} FROM new_samples")  # fmt: skip
                con.unregister("new_samples")

    def eval_results(self, run_id: str) -> list[dict[str, Any]]:
        """A run's metrics: subject, adapter, task, metric, value, stderr, n, cache key."""
        return self.query(
            "SELECT subject, adapter_id, task, metric, value, stderr, n, cache_key "
            "FROM eval_results WHERE run_id = ? ORDER BY task, metric, subject", [run_id]
        )  # fmt: skip

    def eval_samples(self, run_id: str, subject: str, task: str) -> list[dict[str, Any]]:
        """One subject's per-sample rows on a task in a run, `scores` and `choice_logliks`
        (multiple choice: each choice's log-likelihood) parsed, by item id."""
        rows = self.query(
            "SELECT item_id, prediction, target, score, metric, prompt, scores_json, "
            "choice_logliks_json FROM eval_samples "
            "WHERE run_id = ? AND subject = ? AND task = ? ORDER BY item_id",
            [run_id, subject, task],
        )
        for r in rows:
            r["scores"] = json.loads(r.pop("scores_json") or "{}")
            r["choice_logliks"] = json.loads(r.pop("choice_logliks_json") or "[]")
        return rows

    def cached_eval(self, cache_key: str) -> dict[str, Any] | None:
        """The latest base-model scores recorded under `cache_key`: run, task, metrics, n and
        samples; None when no run has them."""
        rows = self.query(
            "SELECT run_id, task, metric, value, stderr, n FROM eval_results "
            "WHERE cache_key = ? AND subject = 'base' AND run_id = ("
            "  SELECT run_id FROM eval_results WHERE cache_key = ? AND subject = 'base' "
            "  ORDER BY created_at DESC LIMIT 1)", [cache_key, cache_key]
        )  # fmt: skip
        if not rows:
            return None
        run_id, task = rows[0]["run_id"], rows[0]["task"]
        return {
            "run_id": run_id,
            "task": task,
            "n": rows[0]["n"],
            "metrics": {r["metric"]: (r["value"], r["stderr"]) for r in rows},
            "samples": self.eval_samples(run_id, "base", task),
        }

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
    ) -> None:
        """One gate's verdict; `files_sha256` is the digest of the adapter files it judged.

        `outcome` is pass, fail or inconclusive (default: from `passed`); `passed` is stored as
        "outcome is pass", so a reader that knows only pass/fail never takes inconclusive for
        pass. `low`/`high` are the confidence bounds, `n_items` the items the decision used.
        """
        outcome = outcome or ("pass" if passed else "fail")
        with self._tx() as con:
            con.execute(
                "INSERT INTO gate_results (run_id, adapter_id, gate, passed, value, threshold, "
                "reason, created_at, files_sha256, outcome, low, high, n_items) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, adapter_id, gate, outcome == "pass", value, threshold, reason, now(),
                 files_sha256, outcome, low, high, n_items],
            )  # fmt: skip

    def latest_gates(self, adapter_id: str) -> list[dict[str, Any]]:
        """The gate verdicts of the latest run that gated this adapter (empty: never gated)."""
        return self.query(
            "SELECT run_id, gate, passed, coalesce(outcome, CASE WHEN passed THEN 'pass' "
            "ELSE 'fail' END) AS outcome, value, threshold, reason, files_sha256, created_at "
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

    def alias_target(self, alias: str) -> str | None:
        rows = self.query("SELECT adapter_id FROM aliases WHERE alias = ?", [alias])
        return rows[0]["adapter_id"] if rows else None

    # -- synthetic review and the human review queue -------------------------------------
    # A queued row's verdict is `rejected / review_pending` from the moment it is queued, and
    # a decision rewrites that one verdict row in the same transaction, so input rows =
    # accepted + rejected holds at every instant, even while a flow is paused for review.

    def record(self, record_id: str) -> dict[str, Any]:
        """One stored record; a unique prefix of its id is enough."""
        rows = self.query("SELECT * FROM records WHERE record_id LIKE ? || '%'", [record_id])
        if len(rows) != 1:
            what = "no record" if not rows else f"{len(rows)} records"
            raise LineageError(f"{what} with id {record_id!r} in {self.path}")
        return rows[0]

    def update_verdicts(self, run_id: str, verdicts: Sequence[Verdict]) -> None:
        """Replace the verdicts of rows already recorded (one row each: counts never change)."""
        with self._tx() as con:
            for v in verdicts:
                _rewrite_verdict(con, run_id, v)

    def record_synthetic_scores(self, run_id: str, rows: Sequence[ScoreRow]) -> None:
        """Scores of every synthetic row: (source, row, record id, outcome, flags, scores)."""
        table = _arrow(
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
                _rewrite_verdict(con, run_id, Verdict(
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
            _rewrite_verdict(con, run_id, Verdict(
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

    def verdicts(self, run_id: str) -> list[Verdict]:
        """A run's verdicts, one per input row, in source order."""
        rows = self.query(
            "SELECT source, source_row, record_id, stage, status, reason, detail "
            "FROM row_verdicts WHERE run_id = ? ORDER BY source, source_row", [run_id]
        )  # fmt: skip
        return [Verdict(**r) for r in rows]

    def review_counts(self, run_id: str) -> dict[str, int]:
        rows = self.query(
            "SELECT status, count(*) AS n FROM review_queue WHERE run_id = ? GROUP BY status",
            [run_id],
        )
        return {r["status"]: r["n"] for r in rows}

    def beat(self, run_id: str) -> bool:
        """Refresh a running run's heartbeat (what tells another host its owner still works);
        False once the run has ended, so the beating thread can stop."""
        with self._tx() as con:
            beaten = con.execute(
                "UPDATE run_owners SET heartbeat = ? WHERE run_id = ? AND run_id IN "
                "(SELECT run_id FROM runs WHERE status = 'running') RETURNING run_id",
                [now(), run_id],
            ).fetchall()
        return bool(beaten)


# DuckDB's buffer limit per connection. Without it, the checkpoint when a connection closes
# grows with the database (1.9 GB resident at 600k curated rows, for a moment); with it the
# peak stays flat (0.9 GB) at the same speed, and big queries spill to disk instead.
MEMORY_LIMIT = "512MB"
_HEADER_BYTES = 3 * 4096  # DuckDB's main header and two database headers, before block 0


def _connect(path: str, wait_s: float = 30.0, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the file, waiting while another process (a review server, a flow) holds its lock."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config={"memory_limit": MEMORY_LIMIT})
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _arrow(columns: list[str], rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """Column-wise Arrow table: DuckDB inserts it in one go (executemany is row by row)."""
    data = list(zip(*rows, strict=True)) if rows else [[] for _ in columns]
    return pa.table(
        {
            c: pa.array(list(v)) if rows else pa.array([], pa.string())
            for c, v in zip(columns, data, strict=True)
        }
    )


def _rewrite_verdict(con: duckdb.DuckDBPyConnection, run_id: str, v: Verdict) -> None:
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


def restore_lineage(backup: Path, path: Path) -> dict[str, int]:
    """A new lineage file at `path` from a `Lineage.backup` folder (refuses to overwrite)."""
    meta = json.loads((backup / "backup.json").read_text())
    if meta["schema_version"] > SCHEMA_VERSION:
        raise LineageError(f"{backup}: schema version {meta['schema_version']}, this tunegate "
                           f"reads {SCHEMA_VERSION}")  # fmt: skip
    if path.exists():
        raise LineageError(f"{path} exists: move it aside first (restore never overwrites)")
    lineage = Lineage(path)
    restored: dict[str, int] = {}
    with lineage._tx() as con:
        con.execute("DELETE FROM meta")  # the backup's own row goes in; migrated below
        for table in meta["tables"]:
            con.execute(f"INSERT INTO \"{table}\" BY NAME SELECT * FROM "
                        f"read_parquet('{backup / (table + '.parquet')}')")  # fmt: skip
            restored[table] = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        if not con.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone():
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    Lineage(path)  # migrates a backup of an older version
    return restored


def damaged_message(path: str, problem: str) -> str:
    return (
        f"{path} is damaged: {problem}. tunegate will not write into it. Recover: restore a "
        f"backup (`tunegate db restore BACKUP_DIR`, after moving the damaged file aside), or "
        f"save what is still readable with `tunegate db backup OUT_DIR` and restore that"
    )
