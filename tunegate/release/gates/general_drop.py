"""No forgetting: per general-capability task, the adapter is not clearly worse than base."""

from __future__ import annotations

from collections.abc import Mapping

from tunegate.config import GeneralGateConfig, PipelineConfig
from tunegate.evaluation.evaluate import EvalOutcome, general_tasks
from tunegate.evaluation.sequential import Look, normal_bounds
from tunegate.evaluation.stage import outcome
from tunegate.release.gates import GateResult, paired_bounds, per_item, same_items, say, three_way


class GeneralDrop:
    """One verdict per task of `eval.general.tasks` (`general_<task>`), on the paired
    per-item `gates.general.metric`; none when the suite is off (`tasks: []`)."""

    name = "general"

    def evaluate(
        self,
        config: PipelineConfig,
        base_evals: list[EvalOutcome],
        adapter_evals: list[EvalOutcome],
    ) -> list[GateResult]:
        metric = config.gates.general.metric
        gates = []
        for task in general_tasks(config):
            tuned = outcome(adapter_evals, task.name)
            base_scores = per_item(outcome(base_evals, task.name), metric)
            adapter_scores = per_item(tuned, metric)
            if tuned.look:  # stopped early: the base on the items the adapter answered
                base_scores = {i: base_scores[i] for i in adapter_scores if i in base_scores}
            short = task.name.removeprefix("tunegate_")
            gates.append(general_drop_gate(short, base_scores, adapter_scores,
                                           config.gates.general, tuned.look))  # fmt: skip
        return gates


def general_drop_gate(
    task: str,
    base: Mapping[str, float],
    adapter: Mapping[str, float],
    config: GeneralGateConfig,
    look: Look | None = None,
) -> GateResult:
    """Non-inferiority on a general task: the adapter is not worse than base by `max_drop`.

    `base` and `adapter` map item id -> per-item metric (`config.metric`) on the same items.
    The paired bootstrap gives one-sided `confidence` bounds of mean(adapter - base): pass
    when the lower bound is above -max_drop (shown not worse than the margin), fail when the
    upper bound is below it (shown worse), inconclusive otherwise; more items
    (`eval.general.limit`) or a finer score (`p_gold`) narrow the interval. With a `look` of
    a sequential evaluation the bounds are mean -+ look.z * se instead, the critical value that
    keeps the error rates over all looks (`tunegate/evaluation/sequential.py`).
    """
    gate, limit = f"{GeneralDrop.name}_{task}", config.drop_limit(task)
    if (broken := same_items(gate, base, adapter, -limit)) is not None:
        return GateResult(gate, "fail", broken.value, -limit, f"{task}: {broken.reason}")
    diff = (paired_bounds(base, adapter, config.confidence, config.bootstrap_iters) if look is None
            else normal_bounds([adapter[i] - base[i] for i in sorted(base)], look.z))  # fmt: skip
    verdict = three_way(diff.low, diff.high, -limit)
    b = sum(base.values()) / len(base)
    value = diff.low if verdict == "pass" else diff.high
    reason = (
        f"{task} {config.metric}: adapter {b + diff.mean:.3f} vs base {b:.3f} on {diff.n} "
        f"items, change {diff.mean:+.3f}, {config.confidence:.0%} bounds [{diff.low:+.3f}, "
        f"{diff.high:+.3f}] against the tolerated drop {-limit:+.3f}: {say(verdict)}"
    ) + (f"; {look.describe()}" if look else "")
    return GateResult(gate, verdict, value, -limit, reason, diff.low, diff.high, diff.n, look)
