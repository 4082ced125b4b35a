"""The lineage file itself: connection, schema (DDL and migrations), integrity, backup, restore.

Only the `tunegate.lineage` package imports duckdb. Each area of the pipeline reads and
writes through its own module here (`runs`, `verdicts`, `training`, `evals`, `registry`,
`review_queue`); all of them share `LineageDatabase`'s connection helpers, so every write is
one transaction and the schema is versioned: an old workspace is migrated or refused, never
misread.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import duckdb
import pyarrow as pa

SCHEMA_VERSION = 7  # 2: synthetic scores and the human review queue; 3: verdict matches, raw rows;
# 4: eval cache keys and per-sample prompts/scores, adapter file digests on gates and promotions
# 5: three-valued gates (outcome, bounds, items used), per-choice log-likelihoods per item
# 6: the sequential look a gate decision was read at (look, looks)
# 7: run owners' heartbeat (a run of another host is reaped when it stops beating)

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
  outcome VARCHAR, low DOUBLE, high DOUBLE, n_items BIGINT, look BIGINT, looks BIGINT);
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
_MIGRATIONS[5] = (
    "ALTER TABLE gate_results ADD COLUMN IF NOT EXISTS look BIGINT; "
    "ALTER TABLE gate_results ADD COLUMN IF NOT EXISTS looks BIGINT;"
)
_MIGRATIONS[6] = "ALTER TABLE run_owners ADD COLUMN IF NOT EXISTS heartbeat TIMESTAMP;"


class LineageError(RuntimeError):
    """The lineage database is unusable or a lookup failed."""


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


class LineageDatabase:
    """One lineage DuckDB file (or `:memory:` in tests): opening, checks and transactions."""

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
    def unchecked(cls, path: str | Path) -> Self:
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


def arrow_table(columns: list[str], rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """Column-wise Arrow table: DuckDB inserts it in one go (executemany is row by row)."""
    data = list(zip(*rows, strict=True)) if rows else [[] for _ in columns]
    return pa.table(
        {
            c: pa.array(list(v)) if rows else pa.array([], pa.string())
            for c, v in zip(columns, data, strict=True)
        }
    )


def restore_lineage(backup: Path, path: Path) -> dict[str, int]:
    """A new lineage file at `path` from a `backup` folder (refuses to overwrite)."""
    meta = json.loads((backup / "backup.json").read_text())
    if meta["schema_version"] > SCHEMA_VERSION:
        raise LineageError(f"{backup}: schema version {meta['schema_version']}, this tunegate "
                           f"reads {SCHEMA_VERSION}")  # fmt: skip
    if path.exists():
        raise LineageError(f"{path} exists: move it aside first (restore never overwrites)")
    lineage = LineageDatabase(path)
    restored: dict[str, int] = {}
    with lineage._tx() as con:
        con.execute("DELETE FROM meta")  # the backup's own row goes in; migrated below
        for table in meta["tables"]:
            con.execute(f"INSERT INTO \"{table}\" BY NAME SELECT * FROM "
                        f"read_parquet('{backup / (table + '.parquet')}')")  # fmt: skip
            restored[table] = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        if not con.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone():
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    LineageDatabase(path)  # migrates a backup of an older version
    return restored


def damaged_message(path: str, problem: str) -> str:
    return (
        f"{path} is damaged: {problem}. tunegate will not write into it. Recover: restore a "
        f"backup (`tunegate db restore BACKUP_DIR`, after moving the damaged file aside), or "
        f"save what is still readable with `tunegate db backup OUT_DIR` and restore that"
    )
