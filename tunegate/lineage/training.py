"""Base models, training runs with their loss logs, and the adapters they produce."""

from __future__ import annotations

import json
from typing import Any

from tunegate.lineage.db import LineageDatabase, LineageError, new_id, now


class TrainingRecords(LineageDatabase):
    """The `base_models`, `training_runs`, `train_log`, `train_eval_log` and `adapters` tables."""

    def record_base_model(self, sha256: str, ref: str, path: str) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO base_models VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [sha256, ref, path, now()],
            )

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
