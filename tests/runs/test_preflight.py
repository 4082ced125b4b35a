"""Every night leaves a trace: runs that fail before they start are `failed` rows in the lineage,
and `tunegate validate` refuses sources that are missing or unreadable, naming the path."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO, write_jsonl
from typer.testing import CliRunner

from flows.pipeline import pipeline
from tunegate.cli import app
from tunegate.config import ConfigError
from tunegate.lineage import Lineage

pytestmark = pytest.mark.unit

ROW = {"instruction": "Say hi.", "output": "Hi there, how can I help you today?"}


def write_config(tmp_path, sources: list[str], **extra: object):
    path = tmp_path / "pipeline.yaml"
    config = {"workspace": "ws", "data": {"sources": [{"path": s} for s in sources]}, **extra}
    path.write_text(yaml.safe_dump(config))
    return path


def failed_runs(workspace) -> list[dict]:
    lineage = Lineage(workspace / "lineage.duckdb")
    return lineage.query("SELECT flow, status, detail, ended_at FROM runs ORDER BY started_at")


def test_validate_names_a_missing_source(tmp_path):
    write_jsonl(tmp_path / "data" / "ok.jsonl", [ROW])
    config = write_config(tmp_path, ["data/ok.jsonl", "data/moved.jsonl"])
    result = CliRunner().invoke(app, ["validate", str(config)])
    assert result.exit_code == 1
    assert "data.sources.1.path" in result.output
    assert str(tmp_path / "data" / "moved.jsonl") in result.output.replace("\n", "")
    assert "data.sources.0" not in result.output  # the readable one is not blamed


def test_validate_refuses_a_directory_without_data_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not data")
    result = CliRunner().invoke(app, ["validate", str(write_config(tmp_path, ["empty"]))])
    assert result.exit_code == 1
    assert "no .jsonl" in result.output


def test_validate_accepts_the_shipped_pipeline():
    result = CliRunner().invoke(app, ["validate", str(REPO / "pipeline.yaml")])
    assert result.exit_code == 0, result.output


def test_a_config_that_does_not_load_is_a_failed_run_in_its_workspace(tmp_path):
    config = write_config(tmp_path, ["data.jsonl"], train={"learning_rate": -1})
    with pytest.raises(ConfigError):
        pipeline.fn(str(config))  # the flow's body: nothing before the error needs Prefect
    ((run,),) = [failed_runs(tmp_path / "ws")]
    assert (run["flow"], run["status"]) == ("pipeline", "failed")
    assert run["ended_at"] is not None
    assert "ConfigError" in run["detail"] and "train.learning_rate" in run["detail"]


def test_a_missing_config_file_is_a_failed_run_in_the_default_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a deployment's working directory: the checkout
    with pytest.raises(ConfigError):
        pipeline.fn("no-such.yaml")
    (run,) = failed_runs(tmp_path / ".tunegate")
    assert run["status"] == "failed" and "no-such.yaml" in run["detail"]
    assert "no such file" in run["detail"]


def test_a_missing_source_fails_the_run_before_the_model_loads(tmp_path):
    config = write_config(tmp_path, ["gone.jsonl"], model={"base_model": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match=r"gone\.jsonl"):
        pipeline.fn(str(config))  # a model that does not exist: loading it would fail first
    (run,) = failed_runs(tmp_path / "ws")
    assert run["status"] == "failed"
    assert str(tmp_path / "gone.jsonl") in run["detail"]
    assert "data.sources.0.path" in run["detail"]


def test_tunegate_run_records_a_config_error_too(tmp_path):
    config = write_config(tmp_path, ["data.jsonl"], dedup={"unknown_knob": 1})
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 1
    (run,) = failed_runs(tmp_path / "ws")
    assert run["status"] == "failed" and "dedup.unknown_knob" in run["detail"]
