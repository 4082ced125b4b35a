"""The recorded eval stage: held-out and general evals of the base model or an adapter,
with the base model's scores reused from the cache when nothing they depend on changed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tunegate.chat import template_text
from tunegate.config import PipelineConfig
from tunegate.evaluation.chunked import evaluate_in_chunks, sequential_designs, task_lines
from tunegate.evaluation.evaluate import (
    EvalOutcome,
    EvalTask,
    Sample,
    cache_key,
    evaluate,
    general_tasks,
    heldout_tasks,
)
from tunegate.lineage import Lineage
from tunegate.models import BaseModel
from tunegate.training.train import TrainResult


def evaluate_recorded(
    config: PipelineConfig,
    lineage: Lineage,
    run_id: str,
    base: BaseModel,
    adapter: TrainResult | None,
    suite: str,
) -> list[EvalOutcome]:
    """The held-out (`suite="heldout"`) or general-capability (`"general"`) evals of the base
    model (adapter None) or of an adapter, recorded with per-sample rows.

    The base model's scores on a task are reused from an earlier run when their cache key
    (base files, task files and data, settings, device, library versions) matches and
    `eval.cache_base` is on; they are recorded under this run either way. The adapter's
    general suite runs chunk by chunk and stops each task once its gate is conclusive
    (`eval.general.sequential`, `tunegate/evaluation/chunked.py`), paired with the base
    scores recorded earlier in this run.
    """
    tasks = heldout_tasks(config) if suite == "heldout" else general_tasks(config)
    subject = "base" if adapter is None else "adapter"
    chat: dict[str, Any] = config.model.model_dump(exclude={"base_model"})
    if config.model.chat_template:  # a .jinja file may change under the same path
        text = template_text(config.model.chat_template, config)
        chat["template_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    keys = {t.name: cache_key(t, base, chat) for t in tasks} if adapter is None else {}
    outcomes: dict[str, EvalOutcome] = {}
    for task in tasks:
        cached = lineage.cached_eval(keys[task.name]) if keys and config.eval.cache_base else None
        if cached is not None:
            outcomes[task.name] = cached_outcome(cached, task)
            print(f"[eval] base: {task.name} reused from run {cached['run_id']} (same cache key)")
    todo = [t for t in tasks if t.name not in outcomes]
    paired = base_items(config, lineage, run_id, todo) if adapter and suite == "general" else None
    if todo and adapter and paired is not None:
        fresh = evaluate_in_chunks(base, adapter.adapter_dir, todo, paired, config)
        outcomes.update({o.task: o for o in fresh})
    elif todo:
        fresh = evaluate(base, adapter.adapter_dir if adapter else None, subject, todo, config)
        outcomes.update({o.task: o for o in fresh})
    for task in tasks:
        o = outcomes[task.name]
        lineage.record_eval(
            run_id, subject, adapter.adapter_id if adapter else None, o.task, o.metrics, o.n,
            o.samples, metric=o.primary, cache_key=keys.get(task.name),
        )  # fmt: skip
    return [outcomes[t.name] for t in tasks]


def base_items(
    config: PipelineConfig, lineage: Lineage, run_id: str, tasks: list[EvalTask]
) -> dict[str, dict[str, float]] | None:
    """Task -> item id -> the base's gated metric, recorded earlier in this run, when the
    adapter should be evaluated sequentially: `eval.general.sequential` on, some task of more
    than one look, and the base scored on every item of every task. None: every item at once.
    """
    if not tasks or not config.eval.general.sequential.enabled:
        return None
    if all(d.looks == 1 for d in sequential_designs(config, tasks).values()):
        return None
    metric, paired = config.gates.general.metric, {}
    for task in tasks:
        rows = lineage.eval_samples(run_id, "base", task.name)
        scores = {r["item_id"]: r["scores"][metric] for r in rows if metric in r["scores"]}
        needed = {json.loads(line).get("id") for line in task_lines(task)}
        if not needed <= set(scores):
            print(f"[eval] adapter: {task.name}: the base's scores of this run do not cover "
                  "its items; every item at once, no sequential stopping")  # fmt: skip
            return None
        paired[task.name] = scores
    return paired


def cached_outcome(cached: dict[str, Any], task: EvalTask) -> EvalOutcome:
    """A base-model outcome rebuilt from the lineage rows of an earlier run."""
    samples = [
        Sample(r["item_id"], r["prediction"], r["target"],
               r["scores"].get(task.primary, r["score"]), r["scores"], r["prompt"] or "",
               tuple(r["choice_logliks"]))
        for r in cached["samples"]
    ]  # fmt: skip
    # The dtype is part of the cache key: the cached scores were computed in the task's.
    return EvalOutcome("base", task.name, cached["metrics"], cached["n"], samples, 0.0,
                       task.primary, task.dtype)  # fmt: skip


def outcome(outcomes: list[EvalOutcome], task: str) -> EvalOutcome:
    """The outcome of one task in a list of them."""
    for o in outcomes:
        if o.task == task:
            return o
    raise KeyError(f"no {task} results among {[o.task for o in outcomes]}")
