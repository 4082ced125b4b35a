"""Eval metrics and per-sample rows of the base model and of adapters, and the base-model
scores a later run may reuse (same cache key)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tunegate.lineage.db import LineageDatabase, arrow_table, now


class EvalRecords(LineageDatabase):
    """The `eval_results` and `eval_samples` tables."""

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
                con.register("new_samples", arrow_table(cols, rows))
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
        """The base-model scores recorded under `cache_key` on the most items (a sequential
        run records the first items only), the latest of those: run, task, metrics, n and
        samples; None when no run has them."""
        rows = self.query(
            "SELECT run_id, task, metric, value, stderr, n FROM eval_results "
            "WHERE cache_key = ? AND subject = 'base' AND run_id = ("
            "  SELECT run_id FROM eval_results WHERE cache_key = ? AND subject = 'base' "
            "  ORDER BY n DESC, created_at DESC LIMIT 1)", [cache_key, cache_key]
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
