from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.config import ConfigError, load_config, parse_config

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent


def test_every_yaml_config_in_the_repo_validates():
    """`tunegate validate` accepts each shipped config: its gates can be conclusive at its eval
    size (examples/gemma3-270m.yaml's 50 items once could not: `tunegate run` does not check)."""
    configs = [REPO / "pipeline.yaml", *sorted((REPO / "examples").glob("*.yaml"))]
    for path in configs:
        assert load_config(path).data.sources, path
        result = CliRunner().invoke(app, ["validate", str(path)])
        assert result.exit_code == 0, (path, result.output)


def test_bad_keys_are_reported_with_path_and_reason(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "data:\n  sources: [{path: x.jsonl, format: xml}]\n"
        "train:\n  learning_rat: 0.1\n  max_steps: -1\nlora:\n  r: zero\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    locs = dict(exc.value.problems)
    assert set(locs) == {"data.sources.0.format", "train.learning_rat", "train.max_steps", "lora.r"}
    assert "Extra inputs are not permitted" in locs["train.learning_rat"]
    assert "greater than or equal to 1" in locs["train.max_steps"]


def test_validate_cli_exit_codes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {sources: []}\nunknown: 1\n")
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "data.sources" in result.output and "unknown" in result.output
    ok = CliRunner().invoke(app, ["validate", str(REPO / "pipeline.yaml")])
    assert ok.exit_code == 0, ok.output


def test_config_is_frozen_and_hash_is_canonical(tmp_path):
    a = parse_config({"data": {"sources": [{"path": "x"}]}, "train": {"seed": 1}})
    b = parse_config({"train": {"seed": 1}, "data": {"sources": [{"path": "x", "format": "auto"}]}})
    c = parse_config({"data": {"sources": [{"path": "x"}]}, "train": {"seed": 2}})
    assert a.config_hash() == b.config_hash() != c.config_hash()
    with pytest.raises(Exception, match="frozen"):
        a.train.seed = 3  # type: ignore[misc]


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.yaml").write_text("data: {sources: [{path: d.jsonl}]}\n")
    cfg = load_config(tmp_path / "sub" / "p.yaml")
    assert cfg.resolve("d.jsonl") == (tmp_path / "sub" / "d.jsonl").resolve()


def test_curation_settings_are_validated(tmp_path):
    ok = parse_config(
        {
            "data": {"sources": [{"path": "x", "fields": {"output": "response"}}]},
            "dedup": {"near_threshold": 0.9},
            "contamination": {"eval_files": []},
        }
    )
    assert ok.data.sources[0].fields == {"output": "response"} and ok.dedup.near_threshold == 0.9
    with pytest.raises(ConfigError) as exc:
        parse_config(
            {
                "data": {"sources": [{"path": "x", "fields": {"answer": "response"}}]},
                "dedup": {"near_threshold": 1.5},
                "contracts": {"batch_suit": None},
            }
        )
    locs = {loc.split(".answer")[0] for loc, _ in exc.value.problems}
    assert {"data.sources.0.fields", "dedup.near_threshold", "contracts.batch_suit"} <= locs


def test_model_chat_format_settings_are_validated(tmp_path):
    from tunegate.chat import SHIPPED_TEMPLATES

    for name in ("chatml", "llama3", "qwen2.5", "qwen3", "gemma", "gemma3", "mistral", "phi3"):
        assert name in SHIPPED_TEMPLATES
        cfg = parse_config({"data": {"sources": [{"path": "x"}]}, "model": {"chat_template": name}})
        assert cfg.model.chat_template == name and cfg.model.system_role == "keep"
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {sources: [{path: x}]}\n"
                   "model: {chat_template: llama-3, system_role: drop}\n")  # fmt: skip
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "model.chat_template" in out and "unknown chat template 'llama-3'" in out
    assert "chatml, llama3, qwen2.5, qwen3, gemma, gemma3, mistral" in out
    assert "model.system_role" in out
    own = parse_config({"data": {"sources": [{"path": "x"}]},
                        "model": {"chat_template": "templates/mine.jinja"}})  # fmt: skip
    assert own.model.chat_template == "templates/mine.jinja"


def test_general_eval_tasks_are_the_yamls_of_evals_tasks_general(tmp_path):
    from tunegate.config import available_general_tasks

    assert available_general_tasks() == ["arc_easy", "hellaswag", "piqa"]
    ok = parse_config({"data": {"sources": [{"path": "x"}]}, "eval": {"general": {"tasks": []}}})
    assert ok.eval.general.tasks == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "data: {sources: [{path: x.jsonl}]}\neval: {general: {tasks: [piqa, mmlu]}}\n"
        "gates: {general: {max_drop_per_task: {winogrande: 0.05}}}\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    problems = dict(exc.value.problems)
    assert set(problems) == {"eval.general.tasks", "gates.general.max_drop_per_task"}
    for key, value in (("eval.general.tasks", "mmlu"),
                       ("gates.general.max_drop_per_task", "winogrande")):  # fmt: skip
        assert f"unknown general eval task {value!r}" in problems[key]
        assert "arc_easy, hellaswag, piqa" in problems[key]
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "eval.general.tasks" in result.output and "'mmlu'" in result.output
