"""Training checkpoints in the workspace, so a killed run picks up where it stopped.

A checkpoint directory belongs to one training *job*: the same config, base weights, snapshot
and number of processes always map to the same directory, whatever the pipeline run id. A
restarted run therefore finds the checkpoints of the run that was killed, and a run with any
other setting never resumes from them (its data order and schedule would differ).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunegate.faults import fault_point

# The trainer writes this file last, after weights, optimizer, scheduler and RNG states.
STATE_FILE = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def job_key(config_hash: str, base_sha256: str, snapshot_sha256: str, world_size: int) -> str:
    """Identity of a training job: everything that decides its steps, data order and weights."""
    parts = [config_hash, base_sha256, snapshot_sha256, str(world_size)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def checkpoint_dir(workspace: Path, key: str) -> Path:
    return workspace / "checkpoints" / key


def last_complete_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written, i.e. not cut short by a kill.

    transformers' own `get_last_checkpoint` takes the highest number even when the process died
    while writing it; resuming from that would fail on a missing optimizer or RNG file.
    """
    if not directory.is_dir():
        return None
    complete = []
    for path in directory.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir() and _state_readable(path / STATE_FILE):
            complete.append((int(match.group(1)), path))
    return max(complete)[1] if complete else None


def _state_readable(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def remove_incomplete(directory: Path) -> list[Path]:
    """Delete checkpoints a kill left half-written, so checkpoint rotation never counts them."""
    removed = []
    if directory.is_dir():
        for path in directory.iterdir():
            if CHECKPOINT_RE.match(path.name) and not _state_readable(path / STATE_FILE):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def checkpoint_step(path: Path) -> int:
    match = CHECKPOINT_RE.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint directory")
    return int(match.group(1))


class CheckpointFaultPoint(TrainerCallback):
    """The `checkpoint_saved` fault point: the trainer calls `on_save` once a checkpoint is
    whole, so a kill there leaves exactly what a resume has to pick up."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        fault_point("checkpoint_saved")
