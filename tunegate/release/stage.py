"""The recorded release stage: every configured gate, then the promotion decision."""

from __future__ import annotations

from collections.abc import Sequence

from tunegate.config import PipelineConfig
from tunegate.evaluation.evaluate import (
    TASK,
    EvalOutcome,
    general_tasks,
)
from tunegate.evaluation.stage import outcome
from tunegate.lineage import Lineage
from tunegate.release.gates import OUTCOMES, GateResult, general_drop_gate, heldout_gain_gate
from tunegate.release.promote import Decision, decide_promotion
from tunegate.training.train import TrainResult


def run_gates(
    config: PipelineConfig, base_evals: list[EvalOutcome], adapter_evals: list[EvalOutcome]
) -> list[GateResult]:
    """Every configured gate: held-out gain, then one no-forgetting gate per general task."""
    metric = config.gates.metric
    base, tuned = outcome(base_evals, TASK), outcome(adapter_evals, TASK)
    if metric not in base.metrics or metric not in tuned.metrics:
        raise KeyError(f"gates.metric {metric!r} is not a held-out metric ({sorted(base.metrics)})")
    gain = heldout_gain_gate(per_item(base, metric), per_item(tuned, metric), config.gates)
    return [gain, *general_gates(config, base_evals, adapter_evals)]


def per_item(o: EvalOutcome, metric: str) -> dict[str, float]:
    """item id -> one metric of that item."""
    return {s.item_id: s.scores[metric] for s in o.samples}


def general_gates(
    config: PipelineConfig, base_evals: list[EvalOutcome], adapter_evals: list[EvalOutcome]
) -> list[GateResult]:
    """One no-forgetting gate per task of `eval.general.tasks`, on paired per-item scores."""
    metric = config.gates.general.metric
    gates = []
    for task in general_tasks(config):
        tuned = outcome(adapter_evals, task.name)
        base_scores = per_item(outcome(base_evals, task.name), metric)
        adapter_scores = per_item(tuned, metric)
        if tuned.look:  # stopped early: the base on the items the adapter answered
            base_scores = {i: base_scores[i] for i in adapter_scores if i in base_scores}
        short = task.name.removeprefix("tunegate_")
        gates.append(general_drop_gate(short, base_scores, adapter_scores, config.gates.general,
                                       tuned.look))  # fmt: skip
    return gates


def gate_and_promote(
    config: PipelineConfig,
    lineage: Lineage,
    run_id: str,
    adapter: TrainResult,
    base_evals: list[EvalOutcome],
    adapter_evals: list[EvalOutcome],
) -> tuple[list[GateResult], Decision]:
    """Run every gate, record the verdicts, and promote only if all passed (or, for an alias
    in `promote.accept_inconclusive`, none failed)."""
    gates = run_gates(config, base_evals, adapter_evals)
    alias = config.promote.alias
    decision = decide_promotion(lineage, run_id, adapter.adapter_id, adapter.adapter_dir, alias,
                                gates, alias in config.promote.accept_inconclusive)  # fmt: skip
    return gates, decision


def gate_summary(gates: Sequence[GateResult], promoted: bool) -> str:
    """ "passed" or "refused", with the gates' outcomes counted: "passed (4 pass)",
    "refused (3 pass, 1 inconclusive)"."""
    counts = [f"{n} {o}" for o in OUTCOMES if (n := sum(g.outcome == o for g in gates))]
    head = "passed" if promoted else "refused"
    return f"{head} ({', '.join(counts)})" if counts else head
