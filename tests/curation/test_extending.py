"""README's "Extending" example, run as written: one check module plus one line in `CHECKS`."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
from conftest import assert_conserved, write_jsonl
from pydantic import Field

from tunegate.config import PipelineConfig, Section
from tunegate.curation import checks
from tunegate.curation.run import curate
from tunegate.lineage import Lineage
from tunegate.runs.summary import funnel_markdown

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def readme_module() -> types.ModuleType:
    """The check module README.md shows, loaded as if it were the file it names."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (source,) = [b for b in blocks if b.startswith("# tunegate/curation/checks/short_answer.py")]
    module = types.ModuleType("tunegate.curation.checks.short_answer")
    exec(compile(source, "README.md", "exec"), module.__dict__)
    return module


class AnswersConfig(Section):
    min_words: int = Field(0, ge=0, description="Reject answers with fewer words (0: off).")


class ExtendedConfig(PipelineConfig):
    """PipelineConfig with the README's switch, as the edit to tunegate/config.py adds it."""

    answers: AnswersConfig = AnswersConfig()


@pytest.fixture
def short_answer(monkeypatch):
    module = readme_module()
    monkeypatch.setattr(checks, "CHECKS", [*checks.CHECKS, module.ShortAnswer])  # the one line
    return module.ShortAnswer


def chat(question: str, answer: str) -> dict[str, str]:
    return {"instruction": question, "output": answer}


def test_a_check_added_in_one_module_and_one_line_judges_rows(short_answer, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [
        chat("How do I reset my password?", "Open settings, then choose reset password."),
        chat("Is the store open on Sunday?", "Yes."),
        chat("What does the premium plan include?", "Priority support and a larger quota."),
    ])  # fmt: skip
    cfg = ExtendedConfig.model_validate({
        "workspace": str(tmp_path / "ws"),
        "data": {"sources": [{"path": "a.jsonl"}], "min_accepted_rows": 1},
        "contamination": {"enabled": False},
        "answers": {"min_words": 3},
    })  # fmt: skip
    cfg._root = tmp_path
    lineage = Lineage(tmp_path / "l.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    result = curate(cfg, lineage, run)

    assert assert_conserved(lineage, run, 3) == {"accepted": 2, "short_answer": 1}
    (v,) = [v for v in lineage.verdicts(run) if v.status == "rejected"]
    assert (v.source_row, v.stage, v.reason) == (2, "short_answer", "short_answer")
    assert v.detail.endswith("1 answer word(s) < answers.min_words 3")
    assert result.stats.stages["short_answer"].rejected == 1

    meaning = "the answer holds fewer than answers.min_words words"
    assert checks.reason_codes()["short_answer"] == meaning
    page = result.report.read_text(encoding="utf-8")
    assert "short_answer" in page and meaning in page
    assert meaning in funnel_markdown(result.n_input, result.reasons)


def test_the_switch_turns_it_off(short_answer, tmp_path):
    cfg = ExtendedConfig.model_validate({"data": {"sources": [{"path": "a.jsonl"}]}})
    assert not any(isinstance(c, short_answer) for c in checks.row_checks(cfg))
    on = cfg.model_copy(update={"answers": AnswersConfig(min_words=2)})
    assert [type(c) for c in checks.row_checks(on)] == [short_answer]


def test_every_check_declares_a_unique_place_and_a_documented_code():
    orders = [kind.order for kind in checks.CHECKS]
    assert len(set(orders)) == len(orders)
    codes = checks.reason_codes()
    assert {kind.reason for kind in checks.CHECKS} <= codes.keys()
    assert {"schema", "synthetic_rejected", "review_rejected", "review_pending"} <= codes.keys()
