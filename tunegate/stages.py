"""Recorded stages: each calls one library function and writes its lineage rows.

The Prefect tasks in `flows/` and the CLI both call these, so a stage behaves the same
whether it runs inside a deployment or from a terminal.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.chat import template_text
from tunegate.config import PipelineConfig
from tunegate.curation.run import CurationResult
from tunegate.data.records import Record
from tunegate.data.snapshot import Snapshot, write_snapshot
from tunegate.evaluation.evaluate import (
    TASK,
    EvalOutcome,
    EvalTask,
    Sample,
    cache_key,
    evaluate,
    general_tasks,
    heldout_tasks,
)
from tunegate.lineage import Lineage
from tunegate.models import BaseModel, config_base_model, resolve_base_model
from tunegate.release.gates import OUTCOMES, GateResult, general_drop_gate, heldout_gain_gate
from tunegate.release.promote import Decision, decide_promotion
from tunegate.runlog import say, stage_line
from tunegate.training.train import TrainResult, train_adapter


def open_lineage(config: PipelineConfig) -> Lineage:
    """The workspace's lineage, for a command that writes: runs whose process died are marked
    `abandoned` first (and their spool files removed)."""
    from tunegate.runs.guard import reap_abandoned

    lineage = Lineage(config.workspace_dir / "lineage.duckdb")
    for run_id in reap_abandoned(lineage, config.workspace_dir):
        logging.getLogger(__name__).warning(
            "run %s was abandoned by its process: marked `abandoned`", run_id
        )
    return lineage


def snapshot_records(
    config: PipelineConfig, lineage: Lineage, run_id: str, records: list[Record]
) -> Snapshot:
    snap = write_snapshot(records, config.workspace_dir / "snapshots")
    lineage.record_snapshot(snap.snapshot_id, run_id, str(snap.path), list(snap.record_ids))
    return snap


def prepare_base_model(config: PipelineConfig, lineage: Lineage) -> BaseModel:
    base = resolve_base_model(config_base_model(config), config.workspace_dir)
    lineage.record_base_model(base.sha256, base.ref, str(base.path))
    return base


def train_recorded(
    config: PipelineConfig, lineage: Lineage | None, run_id: str, base: BaseModel,
    snap: Snapshot, output_dir: Path | None = None,
) -> TrainResult:  # fmt: skip
    """Train on a snapshot, logging the loss curve and the adapter to the lineage.

    Under `accelerate launch` every process trains and only the main one records (lineage
    None elsewhere), so the others are told the adapter directory (`output_dir`).
    """
    if lineage is None:
        if output_dir is None:
            raise ValueError("a process that does not record needs the adapter output_dir")
        return train_adapter(config, base, snap.path, output_dir)
    training_run_id = lineage.start_training(
        run_id, snap.snapshot_id, config.config_hash(), config.train.seed, base.sha256
    )

    def on_log(entry: dict[str, float]) -> None:
        step = int(entry.get("step", 0))
        if "loss" in entry:
            say(stage_line("train", f"step {step}/{config.train.max_steps} · loss "
                           f"{entry['loss']:.3f} · {entry.get('tokens_per_s', 0):.0f} tokens/s"),
                transient=True)  # fmt: skip
            lineage.record_train_log(
                training_run_id, step, float(entry["loss"]),
                float(entry.get("learning_rate", 0.0)), float(entry.get("tokens_per_s", 0.0)),
            )  # fmt: skip
        elif "eval_loss" in entry:
            lineage.record_eval_loss(training_run_id, step, float(entry["eval_loss"]))

    out = output_dir or config.workspace_dir / "adapters" / training_run_id
    try:
        result = train_adapter(
            config, base, snap.path, out, on_log=on_log,
            manifest_extra={"snapshot_id": snap.snapshot_id, "training_run_id": training_run_id,
                            "run_id": run_id},
        )  # fmt: skip
    except BaseException as exc:
        lineage.end_training(training_run_id, "failed", {"error": repr(exc)})
        raise
    lineage.end_training(training_run_id, "completed", {**result.metrics, "steps": result.steps})
    lineage.record_adapter(result.adapter_id, training_run_id, str(result.adapter_dir),
                           base.sha256, snap.snapshot_id, config.config_hash())  # fmt: skip
    return result


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
    `eval.cache_base` is on; they are recorded under this run either way.
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
    if todo:
        fresh = evaluate(base, adapter.adapter_dir if adapter else None, subject, todo, config)
        outcomes.update({o.task: o for o in fresh})
    for task in tasks:
        o = outcomes[task.name]
        lineage.record_eval(
            run_id, subject, adapter.adapter_id if adapter else None, o.task, o.metrics, o.n,
            o.samples, metric=o.primary, cache_key=keys.get(task.name),
        )  # fmt: skip
    return [outcomes[t.name] for t in tasks]


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


def run_gates(
    config: PipelineConfig, base_evals: list[EvalOutcome], adapter_evals: list[EvalOutcome]
) -> list[GateResult]:
    """Every configured gate: held-out gain, then one no-forgetting gate per general task."""
    metric = config.gates.metric
    base, tuned = outcome(base_evals, TASK), outcome(adapter_evals, TASK)
    if metric not in base.metrics or metric not in tuned.metrics:
        raise KeyError(f"gates.metric {metric!r} is not a held-out metric ({sorted(base.metrics)})")
    gain = heldout_gain_gate(per_item(base, metric), per_item(tuned, metric), config.gates)
    return [gain, *general_gates(config, base_evals, adapter_evals)]


def per_item(o: EvalOutcome, metric: str) -> dict[str, float]:
    """item id -> one metric of that item."""
    return {s.item_id: s.scores[metric] for s in o.samples}


def general_gates(
    config: PipelineConfig, base_evals: list[EvalOutcome], adapter_evals: list[EvalOutcome]
) -> list[GateResult]:
    """One no-forgetting gate per task of `eval.general.tasks`, on paired per-item scores."""
    metric = config.gates.general.metric
    gates = []
    for task in general_tasks(config):
        base_scores = per_item(outcome(base_evals, task.name), metric)
        adapter_scores = per_item(outcome(adapter_evals, task.name), metric)
        short = task.name.removeprefix("tunegate_")
        gates.append(general_drop_gate(short, base_scores, adapter_scores, config.gates.general))
    return gates


def gate_and_promote(
    config: PipelineConfig,
    lineage: Lineage,
    run_id: str,
    adapter: TrainResult,
    base_evals: list[EvalOutcome],
    adapter_evals: list[EvalOutcome],
) -> tuple[list[GateResult], Decision]:
    """Run every gate, record the verdicts, and promote only if all passed (or, for an alias
    in `promote.accept_inconclusive`, none failed)."""
    gates = run_gates(config, base_evals, adapter_evals)
    alias = config.promote.alias
    decision = decide_promotion(lineage, run_id, adapter.adapter_id, adapter.adapter_dir, alias,
                                gates, alias in config.promote.accept_inconclusive)  # fmt: skip
    return gates, decision


def gate_summary(gates: Sequence[GateResult], promoted: bool) -> str:
    """ "passed" or "refused", with the gates' outcomes counted: "passed (4 pass)",
    "refused (3 pass, 1 inconclusive)"."""
    counts = [f"{n} {o}" for o in OUTCOMES if (n := sum(g.outcome == o for g in gates))]
    head = "passed" if promoted else "refused"
    return f"{head} ({', '.join(counts)})" if counts else head


@dataclass(frozen=True)
class RunSummary:
    """What a pipeline run prints at the end and returns from the flow."""

    run_id: str
    rows: dict[str, Any]
    heldout: dict[str, Any]
    general: dict[str, dict[str, float]]  # task -> {base, adapter} on gates.general.metric
    gate: str
    adapter_id: str | None
    promoted: bool
    reason: str
    report: str
    eval_report: str


def summarize(
    run_id: str,
    curation: CurationResult,
    config: PipelineConfig,
    base_evals: list[EvalOutcome],
    adapter_evals: list[EvalOutcome],
    decision: Decision,
    report: Path,
    eval_report: Path,
    gates: Sequence[GateResult] = (),
) -> RunSummary:
    accepted = len(curation.accepted)
    metric, general = config.gates.metric, config.gates.general.metric
    return RunSummary(
        run_id=run_id,
        rows={
            "in": curation.n_input,
            "accepted": accepted,
            "rejected": curation.n_input - accepted,
        },
        heldout={
            "metric": metric,
            "base": outcome(base_evals, TASK).metrics[metric][0],
            "adapter": outcome(adapter_evals, TASK).metrics[metric][0],
        },
        general={
            t.name.removeprefix("tunegate_"): {
                "base": outcome(base_evals, t.name).metrics[general][0],
                "adapter": outcome(adapter_evals, t.name).metrics[general][0],
            }
            for t in general_tasks(config)
        },
        gate=gate_summary(gates, decision.promoted),
        adapter_id=decision.adapter_id,
        promoted=decision.promoted,
        reason=decision.reason,
        report=str(report),
        eval_report=str(eval_report),
    )
