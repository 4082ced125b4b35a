"""Runs and their stages: who started a run, how it ended, and which runs are unfinished."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from tunegate.lineage.db import LineageDatabase, new_id, now
from tunegate.process import Owner, current_owner, is_alive


class RunRecords(LineageDatabase):
    """The `runs`, `run_owners` and `stage_runs` tables."""

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

    def run_status(self, run_id: str) -> str | None:
        """A run's status (`running`, `completed`, `abandoned`...); None: no such run."""
        rows = self.query("SELECT status FROM runs WHERE run_id = ?", [run_id])
        return rows[0]["status"] if rows else None

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

    def record_stage(
        self, run_id: str, stage: str, started_at: datetime, status: str, metrics: dict[str, Any]
    ) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO stage_runs VALUES (?, ?, ?, ?, ?, ?)",
                [run_id, stage, started_at, now(), status, json.dumps(metrics, default=str)],
            )
