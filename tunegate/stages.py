"""Recorded stages: each calls one library function and writes its lineage rows.

The Prefect tasks in `flows/` and the CLI both call these, so a stage behaves the same
whether it runs inside a deployment or from a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.config import PipelineConfig
from tunegate.curate import CurationResult
from tunegate.evaluate import EvalOutcome, evaluate_heldout
from tunegate.gates import GateResult, heldout_gain_gate
from tunegate.lineage import Lineage
from tunegate.models import BaseModel, resolve_base_model
from tunegate.promote import Decision, decide_promotion
from tunegate.records import Record
from tunegate.snapshot import Snapshot, write_snapshot
from tunegate.train import TrainResult, train_adapter


def open_lineage(config: PipelineConfig) -> Lineage:
    return Lineage(config.workspace_dir / "lineage.duckdb")


def snapshot_records(
    config: PipelineConfig, lineage: Lineage, run_id: str, records: list[Record]
) -> Snapshot:
    snap = write_snapshot(records, config.workspace_dir / "snapshots")
    lineage.record_snapshot(snap.snapshot_id, run_id, str(snap.path), list(snap.record_ids))
    return snap


def prepare_base_model(config: PipelineConfig, lineage: Lineage) -> BaseModel:
    base = resolve_base_model(config.model.base_model, config.workspace_dir)
    lineage.record_base_model(base.sha256, base.ref, str(base.path))
    return base


def train_recorded(
    config: PipelineConfig, lineage: Lineage, run_id: str, base: BaseModel, snap: Snapshot
) -> TrainResult:
    """Train on a snapshot, logging the loss curve and the adapter to the lineage."""
    training_run_id = lineage.start_training(
        run_id, snap.snapshot_id, config.config_hash(), config.train.seed, base.sha256
    )

    def on_log(entry: dict[str, float]) -> None:
        if "loss" in entry:
            lineage.record_train_log(
                training_run_id, int(entry.get("step", 0)), float(entry["loss"]),
                float(entry.get("learning_rate", 0.0)), float(entry.get("tokens_per_s", 0.0)),
            )  # fmt: skip

    out = config.workspace_dir / "adapters" / training_run_id
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
) -> EvalOutcome:
    """Held-out eval of the base model (adapter None) or of an adapter, recorded."""
    subject = "base" if adapter is None else "adapter"
    outcome = evaluate_heldout(config, base, adapter.adapter_dir if adapter else None, subject)
    lineage.record_eval(
        run_id, subject, adapter.adapter_id if adapter else None, outcome.task,
        outcome.metrics, outcome.n, outcome.samples,
    )  # fmt: skip
    return outcome


def gate_and_promote(
    config: PipelineConfig,
    lineage: Lineage,
    run_id: str,
    adapter: TrainResult,
    base_eval: EvalOutcome,
    adapter_eval: EvalOutcome,
) -> tuple[list[GateResult], Decision]:
    gates = [heldout_gain_gate(base_eval.metrics, adapter_eval.metrics, config.gates)]
    decision = decide_promotion(lineage, run_id, adapter.adapter_id, config.promote.alias, gates)
    return gates, decision


@dataclass(frozen=True)
class RunSummary:
    """What a pipeline run prints at the end and returns from the flow."""

    run_id: str
    rows: dict[str, Any]
    heldout: dict[str, Any]
    gate: str
    adapter_id: str | None
    promoted: bool
    reason: str
    report: str


def summarize(
    run_id: str,
    curation: CurationResult,
    metric: str,
    base_eval: EvalOutcome,
    adapter_eval: EvalOutcome,
    decision: Decision,
    report: Path,
) -> RunSummary:
    accepted = len(curation.accepted)
    return RunSummary(
        run_id=run_id,
        rows={"in": curation.n_input, "accepted": accepted, "rejected": curation.n_input - accepted},
        heldout={"metric": metric, "base": base_eval.metrics[metric][0],
                 "adapter": adapter_eval.metrics[metric][0]},  # fmt: skip
        gate="passed" if decision.promoted else "refused",
        adapter_id=decision.adapter_id,
        promoted=decision.promoted,
        reason=decision.reason,
        report=str(report),
    )
