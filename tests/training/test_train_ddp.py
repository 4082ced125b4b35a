"""`tunegate train` under `accelerate launch`: two CPU processes (DDP over gloo), one adapter.

`--multi_gpu` picks accelerate's torchrun launcher, the one that starts several processes on
one machine; on a machine without GPUs they join a gloo group (`train.process_state`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, free_port
from test_train import write_snapshot_file

from tunegate.lineage import Lineage

pytestmark = pytest.mark.integration


def test_two_cpu_processes_train_one_adapter(tmp_path, tiny_base_model):
    workspace = tmp_path / "ws"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "workspace": str(workspace),
        "data": {"sources": [{"path": "unused.jsonl"}]},
        "model": {"base_model": str(tiny_base_model.path)},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 4, "batch_size": 1, "gradient_accumulation_steps": 2,
                  "logging_steps": 1, "validation_fraction": 0.0, "checkpoint_steps": 2},
    }))  # fmt: skip
    snapshot = write_snapshot_file(tmp_path)
    Lineage(workspace / "lineage.duckdb").record_snapshot("snap-ddp", "run-0", str(snapshot), [])
    out = tmp_path / "adapter"

    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        "-m", "tunegate.cli", "train", str(config), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["steps"] == 4
    # each step holds 2 rows per process: the trainer state counts the tokens of both
    assert manifest["metrics"]["trained_tokens"] > 0
    lineage = Lineage(workspace / "lineage.duckdb")
    runs = lineage.query("SELECT status, metrics_json FROM training_runs")
    assert [r["status"] for r in runs] == ["completed"]  # recorded once, by the main process
    assert lineage.adapter(manifest["adapter_id"])["path"] == str(out)
    assert len(lineage.query("SELECT * FROM train_log")) == 4
