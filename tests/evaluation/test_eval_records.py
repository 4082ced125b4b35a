"""Eval lineage: per-sample rows, the base-model cache, and the v3 -> v4 -> v5 -> v6 schema
migrations."""

from __future__ import annotations

import duckdb
import pytest

import tunegate.evaluation.stage as eval_stage
from tunegate.config import parse_config
from tunegate.evaluation.stage import evaluate_recorded
from tunegate.lineage import SCHEMA_VERSION, Lineage

pytestmark = pytest.mark.unit


def old_lineage_file(tmp_path, version: int) -> tuple:
    """A lineage file stamped with an older schema version; the caller adds that era's tables."""
    db = tmp_path / f"v{version}.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(version)])
    return db, con


def test_a_version_3_lineage_file_gains_the_eval_and_registry_columns(tmp_path):
    db, con = old_lineage_file(tmp_path, 3)
    con.execute("CREATE TABLE promotions (promotion_id VARCHAR PRIMARY KEY, adapter_id VARCHAR, "
                "alias VARCHAR, decision VARCHAR, reason VARCHAR, actor VARCHAR, run_id VARCHAR, "
                "created_at TIMESTAMP)")  # fmt: skip
    con.execute("INSERT INTO promotions VALUES ('p0', 'a0', 'production', 'promoted', 'ok', "
                "'ci', 'r0', now())")  # fmt: skip
    con.execute(
        "CREATE TABLE eval_samples (run_id VARCHAR, subject VARCHAR, adapter_id VARCHAR, "
        "task VARCHAR, item_id VARCHAR, prediction VARCHAR, target VARCHAR, score DOUBLE)"
    )
    con.close()
    lin = Lineage(db)
    assert lin.query("SELECT value FROM meta")[0]["value"] == str(SCHEMA_VERSION) == "7"
    lin.record_promotion("a1", "production", "promoted", "ok", "ci", "r1", "digest")
    history = lin.alias_history("production")
    assert [(h["adapter_id"], h["files_sha256"]) for h in history] == [
        ("a0", None),
        ("a1", "digest"),
    ]
    lin.record_eval("r1", "base", None, "t", {"acc": (0.5, 0.1)}, 2,
                    [("i1", "x", "y", 1.0, {"acc": 1.0}, "prompt"), ("i2", "x", "z", 0.0)],
                    metric="acc", cache_key="k")  # fmt: skip
    rows = lin.eval_samples("r1", "base", "t")
    assert [(r["item_id"], r["scores"], r["prompt"], r["metric"]) for r in rows] == [
        ("i1", {"acc": 1.0}, "prompt", "acc"),
        ("i2", {}, None, "acc"),
    ]


def test_a_version_4_lineage_file_gains_gate_outcomes_and_choice_logliks(tmp_path):
    """Gate rows of version 4 read as pass / fail from `passed`; new rows keep `passed` true
    only for pass, so a reader that knows only `passed` never takes inconclusive for pass."""
    db, con = old_lineage_file(tmp_path, 4)
    con.execute("CREATE TABLE gate_results (run_id VARCHAR, adapter_id VARCHAR, gate VARCHAR, "
                "passed BOOLEAN, value DOUBLE, threshold DOUBLE, reason VARCHAR, "
                "created_at TIMESTAMP, files_sha256 VARCHAR)")  # fmt: skip
    con.execute("INSERT INTO gate_results VALUES ('r0', 'a0', 'heldout_gain', true, 0.5, 0.2, "
                "'ok', now(), 'd'), ('r0', 'a0', 'general_piqa', false, -0.1, -0.02, 'no', "
                "now(), 'd')")  # fmt: skip
    con.execute(
        "CREATE TABLE eval_samples (run_id VARCHAR, subject VARCHAR, adapter_id VARCHAR, "
        "task VARCHAR, item_id VARCHAR, prediction VARCHAR, target VARCHAR, score DOUBLE, "
        "metric VARCHAR, prompt VARCHAR, scores_json VARCHAR)"
    )
    con.close()
    lin = Lineage(db)
    assert lin.query("SELECT value FROM meta")[0]["value"] == str(SCHEMA_VERSION)
    assert {g["gate"]: g["outcome"] for g in lin.latest_gates("a0")} == {
        "heldout_gain": "pass", "general_piqa": "fail"}  # fmt: skip
    lin.record_gate("r1", "a1", "general_piqa", False, 0.01, -0.02, "straddles", "d",
                    outcome="inconclusive", low=-0.05, high=0.01, n_items=50)  # fmt: skip
    (row,) = lin.query("SELECT passed, outcome, low, high, n_items FROM gate_results "
                       "WHERE run_id = 'r1'")  # fmt: skip
    assert row == {"passed": False, "outcome": "inconclusive", "low": -0.05, "high": 0.01,
                   "n_items": 50}  # fmt: skip
    lin.record_eval("r1", "base", None, "piqa", {"p_gold": (0.6, 0.1)}, 1,
                    [("i1", "x", "y", 0.6, {"p_gold": 0.6}, "prompt", (-3.2, -3.6))],
                    metric="p_gold")  # fmt: skip
    (sample,) = lin.eval_samples("r1", "base", "piqa")
    assert sample["choice_logliks"] == [-3.2, -3.6]


def test_a_version_5_lineage_file_gains_the_run_heartbeat(tmp_path):
    """Owners of version 5 never beat (heartbeat NULL: never reaped by age); new runs do."""
    db, con = old_lineage_file(tmp_path, 5)
    con.execute("CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, flow VARCHAR, config_hash "
                "VARCHAR, config_json VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP, "
                "status VARCHAR, detail VARCHAR)")  # fmt: skip
    con.execute("CREATE TABLE run_owners (run_id VARCHAR PRIMARY KEY, pid BIGINT, "
                "host VARCHAR, process_start VARCHAR)")  # fmt: skip
    con.execute("INSERT INTO runs VALUES ('r0', 'curate', 'h', '{}', now(), NULL, 'running', "
                "NULL)")  # fmt: skip
    con.execute("INSERT INTO run_owners VALUES ('r0', 1, 'other-host', NULL)")
    con.close()
    lin = Lineage(db)
    assert lin.query("SELECT value FROM meta")[0]["value"] == str(SCHEMA_VERSION) == "7"
    (old,) = lin.unfinished_runs()
    assert old["heartbeat"] is None and old["alive"] is None
    run_id = lin.start_run("curate", "h", "{}")
    assert lin.beat(run_id) and not lin.beat("r-none")
    lin.end_run(run_id, "completed")
    assert not lin.beat(run_id)  # ended: the beating thread stops


def test_cached_eval_returns_the_latest_base_scores_for_a_key():
    lin = Lineage(":memory:")
    assert lin.cached_eval("k") is None
    lin.record_eval("r1", "base", None, "t", {"acc": (0.4, 0.1)}, 1, [("i", "a", "b", 0.0)],
                    cache_key="k")  # fmt: skip
    lin.record_eval("r2", "adapter", "a", "t", {"acc": (0.9, 0.1)}, 1, cache_key="k")
    cached = lin.cached_eval("k")
    assert cached is not None and cached["run_id"] == "r1"
    assert cached["metrics"] == {"acc": (0.4, 0.1)}
    assert [s["item_id"] for s in cached["samples"]] == ["i"]


@pytest.mark.integration
def test_base_scores_are_reused_when_the_cache_key_matches(tmp_path, monkeypatch, tiny_base_model):
    tiny_base = tiny_base_model
    general = {"tasks": ["piqa"], "limit": 4}
    config = parse_config({"data": {"sources": [{"path": "x"}]}, "eval": {"general": general}},
                          root=tmp_path)  # fmt: skip
    lin = Lineage(":memory:")
    (first,) = evaluate_recorded(config, lin, "run-1", tiny_base, None, "general")

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the base model was evaluated again")

    monkeypatch.setattr(eval_stage, "evaluate", no_model)
    (again,) = evaluate_recorded(config, lin, "run-2", tiny_base, None, "general")
    assert again.metrics == first.metrics
    scores = {s.item_id: s.scores for s in first.samples}
    assert {s.item_id: s.scores for s in again.samples} == scores
    keys = {r["cache_key"] for r in lin.eval_results("run-1") + lin.eval_results("run-2")}
    assert len(keys) == 1 and None not in keys

    off = config.model_copy(update={"eval": config.eval.model_copy(update={"cache_base": False})})
    with pytest.raises(AssertionError, match="evaluated again"):
        evaluate_recorded(off, lin, "run-3", tiny_base, None, "general")
