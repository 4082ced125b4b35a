"""Run reports: Markdown tables a data team and a release reviewer read.

The same Markdown goes into Prefect artifacts and into `reports/<run id>/summary.md`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.config import PipelineConfig
from tunegate.curation.checks import reason_codes
from tunegate.curation.run import CurationResult
from tunegate.evaluation.evaluate import TASK, EvalOutcome, general_tasks
from tunegate.evaluation.stage import outcome
from tunegate.release.gates import GateResult
from tunegate.release.registry import Decision
from tunegate.release.stage import gate_summary
from tunegate.render import markdown_table


def funnel_markdown(n_input: int, reasons: dict[str, int]) -> str:
    meanings = reason_codes()
    rows = [(k, n, meanings.get(k, "")) for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    return f"**{n_input} input rows**\n\n" + markdown_table(["verdict", "rows", "meaning"], rows)


def metrics_markdown(base: dict[str, tuple[float, float | None]],
                     adapter: dict[str, tuple[float, float | None]]) -> str:  # fmt: skip
    rows = []
    for name in sorted(set(base) | set(adapter)):
        b, a = base.get(name, (float("nan"), None))[0], adapter.get(name, (float("nan"), None))[0]
        rows.append((name, b, a, a - b))
    return markdown_table(["metric", "base", "adapter", "gain"], rows)


def gates_markdown(gates: Sequence[GateResult]) -> str:
    """Every gate's outcome (pass, FAIL, inconclusive), value, threshold, items and reason."""
    rows = [(g.gate, "FAIL" if g.outcome == "fail" else g.outcome, g.value, g.threshold, g.n,
             g.reason) for g in gates]  # fmt: skip
    return markdown_table(["gate", "outcome", "value", "threshold", "items", "reason"], rows)


def write_report(reports_dir: Path, run_id: str, sections: dict[str, str]) -> Path:
    """Write `reports/<run id>/summary.md` from titled Markdown sections."""
    out = reports_dir / run_id
    out.mkdir(parents=True, exist_ok=True)
    body = "\n\n".join(f"## {title}\n\n{text}" for title, text in sections.items())
    path = out / "summary.md"
    path.write_text(f"# tunegate run {run_id}\n\n{body}\n")
    return path


@dataclass(frozen=True)
class RunSummary:
    """What a pipeline run prints at the end and returns from the flow."""

    run_id: str
    rows: dict[str, Any]
    heldout: dict[str, Any]
    general: dict[str, dict[str, float]]  # task -> {base, adapter} on gates.general.metric
    gate: str
    adapter_id: str | None
    promoted: bool
    reason: str
    report: str
    eval_report: str


def summarize(
    run_id: str,
    curation: CurationResult,
    config: PipelineConfig,
    base_evals: list[EvalOutcome],
    adapter_evals: list[EvalOutcome],
    decision: Decision,
    report: Path,
    eval_report: Path,
    gates: Sequence[GateResult] = (),
) -> RunSummary:
    accepted = len(curation.accepted)
    metric, general = config.gates.metric, config.gates.general.metric
    return RunSummary(
        run_id=run_id,
        rows={
            "in": curation.n_input,
            "accepted": accepted,
            "rejected": curation.n_input - accepted,
        },
        heldout={
            "metric": metric,
            "base": outcome(base_evals, TASK).metrics[metric][0],
            "adapter": outcome(adapter_evals, TASK).metrics[metric][0],
        },
        general={
            t.name.removeprefix("tunegate_"): {
                "base": outcome(base_evals, t.name).metrics[general][0],
                "adapter": outcome(adapter_evals, t.name).metrics[general][0],
            }
            for t in general_tasks(config)
        },
        gate=gate_summary(gates, decision.promoted),
        adapter_id=decision.adapter_id,
        promoted=decision.promoted,
        reason=decision.reason,
        report=str(report),
        eval_report=str(eval_report),
    )
