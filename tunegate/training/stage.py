"""The recorded training stage: train on a snapshot, log the loss curve and the adapter."""

from __future__ import annotations

from pathlib import Path

from tunegate.config import PipelineConfig
from tunegate.data.snapshot import Snapshot
from tunegate.lineage import Lineage
from tunegate.models import BaseModel
from tunegate.runlog import say, stage_line
from tunegate.training.train import TrainResult, train_adapter


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
