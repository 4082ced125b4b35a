"""The recorded eval stage: held-out and general evals of the base model or an adapter,
with the base model's scores reused from the cache when nothing they depend on changed."""

from __future__ import annotations

import hashlib
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
    model (adapter None) or of an adapter on every item, recorded with per-sample rows.

    The base model's scores on a task are reused from an earlier run when their cache key
    (base files, task files and data, settings, device, library versions) matches, they cover
    every item and `eval.cache_base` is on; they are recorded under this run either way.
    """
    tasks = heldout_tasks(config) if suite == "heldout" else general_tasks(config)
    subject = "base" if adapter is None else "adapter"
    keys = cache_keys(config, base, tasks) if adapter is None else {}
    outcomes: dict[str, EvalOutcome] = {}
    found = cached_base(config, lineage, keys, tasks)
    for task in tasks:  # a base record of a sequential run may hold the first items only
        if (cached := found.get(task.name)) is None:
            continue
        if cached.n == (size := len(task_lines(task))):
            outcomes[task.name] = cached
        else:
            print(f"[eval] base: {task.name}: the cache holds {cached.n} of {size} items; "
                  "every item evaluated")  # fmt: skip
    todo = [t for t in tasks if t.name not in outcomes]
    if todo:
        fresh = evaluate(base, adapter.adapter_dir if adapter else None, subject, todo, config)
        outcomes.update({o.task: o for o in fresh})
    result = [outcomes[t.name] for t in tasks]
    record(lineage, run_id, adapter, result, keys)
    return result


def evaluate_general_recorded(
    config: PipelineConfig, lineage: Lineage, run_id: str, base: BaseModel, adapter: TrainResult
) -> tuple[list[EvalOutcome], list[EvalOutcome]]:
    """The general suite of base and adapter, (base outcomes, adapter outcomes), recorded.

    With `eval.general.sequential` on and a task of more than one look, both subjects answer
    chunk by chunk and each task stops once its gate is conclusive
    (`tunegate/evaluation/chunked.py`): the base answers only the items the decision needs
    and its cached scores lack, and its record grows from run to run under the same cache
    key. Otherwise each subject answers every item, the base's full scores reused as in
    `evaluate_recorded`.
    """
    tasks = general_tasks(config)
    sequential = config.eval.general.sequential.enabled and any(
        d.looks > 1 for d in sequential_designs(config, tasks).values())  # fmt: skip
    if not tasks or not sequential:
        return (evaluate_recorded(config, lineage, run_id, base, None, "general"),
                evaluate_recorded(config, lineage, run_id, base, adapter, "general"))  # fmt: skip
    keys = cache_keys(config, base, tasks)
    known = {name: o.samples for name, o in cached_base(config, lineage, keys, tasks).items()}
    base_outcomes, adapter_outcomes = evaluate_in_chunks(base, adapter.adapter_dir, tasks,
                                                         known, config)  # fmt: skip
    record(lineage, run_id, None, base_outcomes, keys)
    record(lineage, run_id, adapter, adapter_outcomes, {})
    return base_outcomes, adapter_outcomes


def cache_keys(config: PipelineConfig, base: BaseModel, tasks: list[EvalTask]) -> dict[str, str]:
    """Task -> the cache key of the base model's scores on it."""
    chat: dict[str, Any] = config.model.model_dump(exclude={"base_model"})
    if config.model.chat_template:  # a .jinja file may change under the same path
        text = template_text(config.model.chat_template, config)
        chat["template_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return {t.name: cache_key(t, base, chat) for t in tasks}


def cached_base(
    config: PipelineConfig, lineage: Lineage, keys: dict[str, str], tasks: list[EvalTask]
) -> dict[str, EvalOutcome]:
    """The base model's scores an earlier run recorded under each task's key (the most items
    first), when `eval.cache_base` is on; tasks without any are left out."""
    found: dict[str, EvalOutcome] = {}
    for task in tasks:
        cached = lineage.cached_eval(keys[task.name]) if keys and config.eval.cache_base else None
        if cached is not None:
            found[task.name] = cached_outcome(cached, task)
            print(f"[eval] base: {task.name}: {cached['n']} items' scores from run "
                  f"{cached['run_id']} (same cache key)")  # fmt: skip
    return found


def record(
    lineage: Lineage, run_id: str, adapter: TrainResult | None, outcomes: list[EvalOutcome],
    keys: dict[str, str],
) -> None:  # fmt: skip
    """Each outcome's metrics and samples under this run (the base's with its cache key)."""
    for o in outcomes:
        lineage.record_eval(
            run_id, o.subject, adapter.adapter_id if adapter else None, o.task, o.metrics, o.n,
            o.samples, metric=o.primary, cache_key=keys.get(o.task),
        )  # fmt: skip


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
