"""The recorded training stage: loss curve in DuckDB, drawn into the run report."""

from __future__ import annotations

import pytest
from test_train import make_train_config, write_snapshot_file

from tunegate.data.snapshot import Snapshot
from tunegate.lineage import Lineage
from tunegate.training.report import CURVE_FILE, training_section
from tunegate.training.stage import train_recorded

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]


def test_recorded_training_keeps_the_loss_curve_and_draws_it(tmp_path, tiny_base_model):
    from PIL import Image

    config = make_train_config(tmp_path, max_steps=4, validation_fraction=0.25, eval_steps=2)
    lineage = Lineage(":memory:")
    run_id = lineage.start_run("pipeline", config.config_hash(), config.model_dump_json())
    snap = Snapshot("snap-1", write_snapshot_file(tmp_path), ())
    result = train_recorded(config, lineage, run_id, tiny_base_model, snap)

    curve = lineage.loss_curve(lineage.adapter(result.adapter_id)["training_run_id"])
    assert [p["step"] for p in curve] == [1, 2, 3, 4]
    assert all(p["loss"] > 0 for p in curve)
    assert [p["step"] for p in curve if p["eval_loss"] is not None] == [2, 4]

    section = training_section(lineage, result, tmp_path / "report")
    assert f"![loss curve]({CURVE_FILE})" in section and "| last_eval_loss |" in section
    with Image.open(tmp_path / "report" / CURVE_FILE) as image:
        assert image.format == "PNG" and image.width > 300
