"""A gate that cannot reach a conclusion at the configured size is a config error that says
the n it needs (`tunegate validate`, and `tunegate run` before it spends any time)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.config import SequentialConfig, parse_config
from tunegate.release.sizing import items_needed, items_needed_sequential, sizing_problems

pytestmark = pytest.mark.unit


def config_file(tmp_path: Path, general_eval: dict, general_gate: dict) -> Path:
    """The shipped pipeline.yaml with other general-suite settings, paths made absolute."""
    config = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    for source in config["data"]["sources"]:
        source["path"] = str(REPO / source["path"])
    config["eval"]["heldout_path"] = str(REPO / config["eval"]["heldout_path"])
    config["eval"]["general"].update(general_eval)
    config["gates"]["general"].update(general_gate)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_items_needed_grows_as_the_margin_shrinks_and_binary_scores_need_far_more():
    p_gold = [items_needed("p_gold", m, 0.95) for m in (0.1, 0.05, 0.02, 0.01)]
    assert p_gold == sorted(p_gold) and p_gold[-1] > 3 * p_gold[-2]  # ~1 / margin^2
    assert items_needed("acc_norm", 0.02, 0.95) > 10 * items_needed("p_gold", 0.02, 0.95)
    assert items_needed("acc", 0.5, 0.95) >= 2  # a share moves by 1 / n at least


def test_a_sequential_last_look_needs_a_few_more_items_than_the_fixed_test():
    fixed = items_needed("p_gold", 0.02, 0.95)
    sequential = items_needed_sequential("p_gold", 0.02, 0.95, SequentialConfig(chunk=20))
    assert fixed < sequential < 1.2 * fixed
    off = SequentialConfig(enabled=False)
    assert items_needed_sequential("p_gold", 0.02, 0.95, off) == fixed


def test_the_shipped_pipeline_can_be_conclusive():
    config = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    assert sizing_problems(parse_config(config, root=REPO)) == []


def test_validate_refuses_a_gate_that_cannot_be_conclusive_and_says_the_n_needed(tmp_path):
    path = config_file(tmp_path, {"limit": 50}, {"metric": "acc_norm", "max_drop": 0.05})
    result = CliRunner().invoke(app, ["validate", str(path)])
    needed = items_needed_sequential("acc_norm", 0.05, 0.95, SequentialConfig())
    assert result.exit_code == 1
    out = " ".join(result.stderr.split())  # rich folds long lines
    assert "gates.general.max_drop" in out
    assert "piqa: a 0.05 margin on acc_norm cannot be shown at 50 items" in out
    assert f"needs n >= {needed}; set eval.general.limit to at least {needed}" in out

    path = config_file(tmp_path, {"limit": needed}, {"metric": "acc_norm", "max_drop": 0.05})
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 0

    path = config_file(
        tmp_path,
        {"limit": None},
        {"metric": "acc_norm", "max_drop": 0.02, "max_drop_per_task": {"arc_easy": 0.0}},
    )
    out = " ".join(CliRunner().invoke(app, ["validate", str(path)]).stderr.split())
    assert "more than the 500 items the shipped file holds" in out
    assert "gates.general.max_drop_per_task.arc_easy: a margin of 0 can never be shown" in out
