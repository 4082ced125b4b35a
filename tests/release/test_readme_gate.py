"""The README's "Extending" examples work as written: its example gate, listed in `GATES`,
gives a verdict among the others, and its example general task YAML is accepted by the config."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import yaml

from tunegate import config as settings
from tunegate.config import ConfigError, parse_config
from tunegate.evaluation import evaluate
from tunegate.evaluation.evaluate import TASK, EvalOutcome, Sample
from tunegate.release import stage

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks(section: str, lang: str) -> list[str]:
    """The fenced `lang` blocks of one `###` section of the README."""
    text = README.read_text()
    body = text.split(f"### {section}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", body, flags=re.S)


def heldout(subject: str, json_valid: list[float]) -> EvalOutcome:
    """Held-out scores: the gain gate's metric and the example gate's, item by item."""
    gain = 1.0 if subject == "adapter" else 0.0
    samples = [
        Sample(f"item-{i}", "{}", "{}", gain, {"field_accuracy": gain, "json_valid": v}, "")
        for i, v in enumerate(json_valid)
    ]
    n = len(samples)
    metrics = {"field_accuracy": (gain, None), "json_valid": (sum(json_valid) / n, None)}
    return EvalOutcome(subject, TASK, metrics, n, samples, 1.0, "field_accuracy", "float32")


def test_the_example_gate_is_listed_and_gives_its_verdict(monkeypatch):
    code, listing = readme_blocks("Adding a gate", "python")
    module = types.ModuleType("json_valid")
    exec(compile(code, "README.md:json_valid", "exec"), module.__dict__)
    assert "    JsonValid(),\n" in listing  # the one line that lists it
    monkeypatch.setattr(stage, "GATES", (*stage.GATES, module.JsonValid()))

    no_suite = {"eval": {"general": {"tasks": []}}}  # held-out gates only
    config = parse_config({"data": {"sources": [{"path": "x"}]}, **no_suite})
    base = [heldout("base", [1.0] * 40)]
    kept, broken = [heldout("adapter", [1.0] * 40)], [heldout("adapter", [1.0] * 10 + [0.0] * 30)]
    gates = stage.run_gates(config, base, kept)
    assert [g.gate for g in gates] == ["heldout_gain", "json_valid"]
    assert [g.outcome for g in gates] == ["pass", "pass"] and gates[1].n == 40
    (_, json_valid) = stage.run_gates(config, base, broken)
    assert json_valid.outcome == "fail" and json_valid.threshold == -0.05
    assert "json_valid: change -0.750" in json_valid.reason


def test_the_example_general_task_is_accepted_once_its_yaml_is_there(tmp_path, monkeypatch):
    (spec,) = readme_blocks("Adding a general eval task", "yaml")
    task = yaml.safe_load(spec)
    assert task["task"] == "tunegate_sciq"
    general = {"eval": {"general": {"tasks": ["piqa", "sciq"]}}}
    with pytest.raises(ConfigError, match="unknown general eval task 'sciq'"):
        parse_config({"data": {"sources": [{"path": "x"}]}, **general})
    for path in settings.GENERAL_TASKS_DIR.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "sciq.yaml").write_text(spec)
    monkeypatch.setattr(settings, "GENERAL_TASKS_DIR", tmp_path)
    config = parse_config({"data": {"sources": [{"path": "x"}]}, **general})
    assert [t.yaml for t in evaluate.general_tasks(config)] == [
        tmp_path / "piqa.yaml",
        tmp_path / "sciq.yaml",
    ]
