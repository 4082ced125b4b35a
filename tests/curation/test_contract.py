"""The record contract lives in schemas/record_contract.yaml; Python only runs it."""

from pathlib import Path

import pytest

from tunegate.curation.checks.contract import DEFAULT_CONTRACT, RecordContract, contract_failures
from tunegate.data.records import Record

pytestmark = pytest.mark.unit


def rec(*messages: tuple[str, str], origin: str = "human") -> Record:
    return Record(tuple(messages), origin, "s", 1)


def test_every_failure_of_a_row_is_listed():
    bad = rec(("assistant", " "), ("user", "u"))
    assert contract_failures(bad) == [
        "messages[0].content: empty (assistant)",
        "messages[0].role: expected user (turns must alternate)",
        "messages[1].role: last turn must be assistant",
    ]
    assert contract_failures(rec(("user", "u"), ("assistant", "a"))) == []


@pytest.mark.parametrize(("messages", "expected"), [
    ((("user", "u"), ("system", "s"), ("assistant", "a")), "system turn only allowed first"),
    ((("bot", "x"), ("assistant", "a")), "'bot' is not one of system, user, assistant"),
    ((("system", "s"),), "0 user/assistant turn(s), at least 2 needed"),
    ((), "messages: no turns"),
])  # fmt: skip
def test_each_contract_check(messages, expected):
    assert any(expected in f for f in contract_failures(rec(*messages)))


def test_origin_is_a_closed_set():
    assert contract_failures(rec(("user", "u"), ("assistant", "a"), origin="scraped")) == [
        "origin: 'scraped' fails isin"
    ]


def test_the_yaml_is_the_single_source_of_truth(tmp_path):
    """A data team edits the YAML: here, no system prompts allowed and two exchanges needed."""
    text = DEFAULT_CONTRACT.read_text()
    text = text.replace("isin: [system, user, assistant]", "isin: [user, assistant]")
    text = text.replace("min_turns: 2", "min_turns: 4")
    path = tmp_path / "contract.yaml"
    path.write_text(text)
    contract = RecordContract(path)
    failures = contract.failures([rec(("system", "s"), ("user", "u"), ("assistant", "a"))])[0]
    assert "messages[0].role: 'system' is not one of user, assistant" in failures
    assert any("at least 4 needed" in f for f in failures)


def test_a_broken_contract_file_names_itself(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("columns: {role: {dtype: str}}\nchecks: {no_such_check: {role: x}}\n")
    with pytest.raises(ValueError, match=str(path)):
        RecordContract(Path(path))
