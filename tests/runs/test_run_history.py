"""Nights side by side: `tunegate runs`, reports/trends.html and their change flags, on a real
lineage file holding three recorded nights (promoted, refused, failed before curation)."""

from __future__ import annotations

import time
from datetime import datetime
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from tunegate.cli import app, shared
from tunegate.data.verdicts import Verdict
from tunegate.lineage import Lineage
from tunegate.runs.history import GateOutcome, Night, changes, run_history
from tunegate.runs.trends import trends_markdown, write_trends

pytestmark = pytest.mark.unit

HUMAN, SYNTH, NEW = "data/human.jsonl", "data/synthetic.jsonl", "data/partner.jsonl"


def record_night(lineage: Lineage, sources: dict[str, int], rejected: dict[str, int],
                 gain: float, status: str) -> str:  # fmt: skip
    """A night as the pipeline records it: sources, one verdict per row, gates, a decision."""
    run_id = lineage.start_run("pipeline", "hash", "{}")
    for path, n in sources.items():
        lineage.record_source(run_id, path, "sha", "alpaca", "human", n)
    reasons = [r for r, n in rejected.items() for _ in range(n)]
    verdicts = [
        Verdict(path, i, f"rec-{path}-{i}", "x", "rejected" if reasons else "accepted",
                reasons.pop() if reasons else None)
        for path, n in sources.items() for i in range(n)
    ]  # fmt: skip
    lineage.record_verdicts(run_id, verdicts)
    lineage.record_gate(run_id, "ad-" + run_id, "heldout_gain", gain >= 0.2, gain, 0.2, "why")
    lineage.record_gate(run_id, "ad-" + run_id, "general_piqa", True, -0.01, -0.02, "why")
    decision = "promoted" if status == "promoted" else "refused"
    lineage.record_promotion("ad-" + run_id, "production", decision, "why", "ci", run_id)
    lineage.end_run(run_id, status, "gain below the minimum" if status == "refused" else "ok")
    time.sleep(0.01)  # distinct start times order the nights
    return run_id


def three_nights(lineage: Lineage) -> list[str]:
    first = record_night(lineage, {HUMAN: 300, SYNTH: 100}, {"exact_duplicate": 10, "schema": 4},
                         gain=0.6, status="promoted")  # fmt: skip
    second = record_night(lineage, {HUMAN: 300, SYNTH: 100, NEW: 100},
                          {"exact_duplicate": 12, "schema": 4, "near_duplicate": 60},
                          gain=0.25, status="refused")  # fmt: skip
    third = lineage.start_run("pipeline", "", "workspace: [")
    lineage.end_run(third, "failed", "ConfigError: pipeline.yaml: 1 problem(s)")
    return [first, second, third]


def test_history_counts_and_flags_what_changed(tmp_path):
    lineage = Lineage(tmp_path / "lineage.duckdb")
    first, second, third = three_nights(lineage)
    lineage.start_run("curate", "hash", "{}")  # not a night: only pipeline runs count

    nights = run_history(lineage)
    assert [n.run_id for n in nights] == [first, second, third]
    one, two, failed = nights
    assert (one.rows_in, one.accepted, one.rejected) == (400, 386, {"exact_duplicate": 10,
                                                                    "schema": 4})  # fmt: skip
    assert two.rows_in == two.accepted + sum(two.rejected.values()) == 500
    assert one.promoted_adapter == "ad-" + first and two.promoted_adapter is None
    assert [g.gate for g in two.gates] == ["heldout_gain", "general_piqa"]
    assert (failed.status, failed.rows_in, failed.gates) == ("failed", 0, ())
    assert one.duration_s is not None and one.duration_s >= 0

    flags = changes(one, two)
    assert "new source data/partner.jsonl" in flags
    assert "near_duplicate share 0.0% → 12.0%" in flags  # jumped
    assert not any(f.startswith("exact_duplicate") for f in flags)  # 2.5% → 2.4%: steady
    assert any(f.startswith("heldout_gain nearer its threshold: margin +0.400 → +0.050")
               for f in flags)  # fmt: skip
    assert not any(f.startswith("general_piqa") for f in flags)  # same margin
    assert "status promoted → refused" in flags
    assert changes(None, one) == []
    assert "status refused → failed" in changes(two, failed)


def test_trends_page_and_artifact_show_every_night(tmp_path):
    lineage = Lineage(tmp_path / "lineage.duckdb")
    ids = three_nights(lineage)
    path = write_trends(tmp_path / "reports", run_history(lineage))
    assert path == tmp_path / "reports" / "trends.html"

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([dict(attrs).get("class") or ""])

        def handle_data(self, data):
            if self.rows:
                self.rows[-1].append(data)

    parser = Rows()
    parser.feed(path.read_text())
    header, *nights = [" ".join(r) for r in parser.rows]
    assert "rejected by reason" in header and "gates" in header
    assert [next(i for i in ids if i in row) for row in nights] == ids[::-1]  # newest first
    failed, refused, promoted = nights
    assert "ConfigError" in failed
    assert refused.startswith("flag") and "new source data/partner.jsonl" in refused
    assert "near_duplicate 60 (12.0%)" in refused and "heldout_gain pass +0.250" in refused
    assert not promoted.startswith("flag")  # the first night has nothing to compare with

    markdown = trends_markdown(run_history(lineage))
    assert markdown.startswith("**3 nights**") and "near_duplicate share 0.0% → 12.0%" in markdown


def test_tunegate_runs_lists_the_nights(tmp_path, monkeypatch):
    monkeypatch.setattr(shared.console, "width", 400)  # a wide terminal: one line per run
    lineage = Lineage(tmp_path / "ws" / "lineage.duckdb")
    ids = three_nights(lineage)
    del lineage  # the CLI opens the file itself
    result = CliRunner().invoke(
        app, ["runs", "-w", str(tmp_path / "ws"), "--trends", str(tmp_path / "reports")]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for run_id, status in zip(ids, ("promoted", "refused", "failed"), strict=True):
        (line,) = [line for line in lines if run_id in line]
        assert status in line
    flat = result.output.replace(" ", "")
    for expected in ("400/386", "near_duplicate60", "newsourcedata/partner.jsonl",
                     "heldout_gainpass+0.250", "ConfigError"):  # fmt: skip
        assert expected in flat, expected
    assert (tmp_path / "reports" / "trends.html").is_file()


def test_a_gate_that_starts_failing_and_a_drop_in_accepted_rows_are_flagged():
    def night(accepted: int, gain: float) -> Night:
        return Night("run", "refused", datetime(2026, 11, 1), None, None, rows_in=500,
                     accepted=accepted, rejected={"schema": 500 - accepted},
                     gates=(GateOutcome("heldout_gain", gain >= 0.2, gain, 0.2),))  # fmt: skip

    flags = changes(night(450, 0.3), night(350, 0.1))
    assert "heldout_gain now fails: +0.300 → +0.100 (threshold +0.200)" in flags
    assert "accepted rows 450 → 350" in flags
    assert "schema share 10.0% → 30.0%" in flags
    assert changes(night(450, 0.3), night(440, 0.28)) == []  # small moves are not news
