"""The eval report: banner, gates, base vs adapter with intervals, wins and losses side by side."""

from __future__ import annotations

import pytest
from browser import chromium, is_blank, needs_chromium

from tunegate.evaluation.evaluate import EvalOutcome, Sample
from tunegate.release.gates import GateResult
from tunegate.release.registry import Decision
from tunegate.release.report import metric_rows, write_eval_report

pytestmark = pytest.mark.unit


def outcome(subject: str, task: str, metric: str, scores: list[float]) -> EvalOutcome:
    samples = [
        Sample(f"{task}-{i}", f"{subject} answer {i} <b>", f"gold {i}", s, {metric: s},
               f"Question {i}?\nAnswer:")
        for i, s in enumerate(scores)
    ]  # fmt: skip
    mean = sum(scores) / len(scores)
    return EvalOutcome(
        subject, task, {metric: (mean, 0.05)}, len(scores), samples, 1.0, metric, "float32"
    )


@pytest.fixture
def evals() -> tuple[list[EvalOutcome], list[EvalOutcome]]:
    base = [outcome("base", "tunegate_heldout", "field_accuracy", [0.0, 1 / 3, 0.0, 1.0]),
            outcome("base", "tunegate_piqa", "acc_norm", [1.0, 0.0, 1.0, 1.0])]  # fmt: skip
    adapter = [outcome("adapter", "tunegate_heldout", "field_accuracy", [1.0, 1.0, 2 / 3, 1.0]),
               outcome("adapter", "tunegate_piqa", "acc_norm", [1.0, 1.0, 0.0, 0.0])]  # fmt: skip
    return base, adapter


GATES = [GateResult("heldout_gain", "pass", 0.58, 0.2, "gain +0.583 passes"),
         GateResult("general_piqa", "fail", -0.1, -0.02, "piqa dropped"),
         GateResult("general_arc_easy", "inconclusive", 0.01, -0.02, "arc straddles")]  # fmt: skip
REFUSED = Decision("abc123" * 10, "production", False, "refused: gate general_piqa failed",
                   "refused")  # fmt: skip


def test_rows_pair_the_items_and_give_intervals(evals):
    held, piqa = metric_rows(*evals)
    assert (held.task, held.metric, held.n) == ("heldout", "field_accuracy", 4)
    assert held.change.mean == pytest.approx(0.5833, abs=1e-3)
    assert held.base.low < held.base.mean < held.base.high
    assert piqa.change.mean == pytest.approx(-0.25)
    assert piqa.as_dict()["change"].startswith("-0.250 [")


def test_report_shows_banner_gates_and_wins_and_losses(evals, tmp_path):
    path = write_eval_report(tmp_path, "run-1", REFUSED.adapter_id, *evals, GATES, REFUSED)
    assert path == tmp_path / "run-1" / "eval.html"
    html = path.read_text()
    assert "<b>REFUSED</b>" in html and "refused: gate general_piqa failed" in html
    assert html.count("<td class=bad>FAIL</td>") == 1 and "piqa dropped" in html
    assert html.count("<td class=warn>inconclusive</td>") == 1 and "arc straddles" in html
    assert html.count("<td class=ok>pass</td>") == 1
    assert "3 items better with the adapter, 0 worse, 1 unchanged" in html  # held-out
    assert "1 items better with the adapter, 2 worse, 1 unchanged" in html  # piqa
    assert "adapter answer 1 &lt;b&gt;" in html  # answers are escaped, never markup
    assert 'src="data:image/png;base64,' in html


@pytest.mark.integration
@needs_chromium
def test_report_renders_in_headless_chromium(evals, tmp_path):
    path = write_eval_report(tmp_path, "run-1", REFUSED.adapter_id, *evals, GATES, REFUSED)
    with chromium(tmp_path / "profile") as browser:
        browser.get(path.as_uri())
        assert browser.text("h1") == "Eval report · run run-1"
        assert {"Gates", "Base vs adapter", "Where the adapter wins and loses"} <= set(
            browser.texts("h2")
        )
        widths = browser.script("return [...document.images].map(e => e.naturalWidth)")
        assert len(widths) == 1 and widths[0] > 0
        assert not is_blank(browser.screenshot(tmp_path / "eval.png"))
