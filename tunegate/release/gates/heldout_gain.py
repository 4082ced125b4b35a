"""Held-out gain: the adapter must beat the base model on the project's own task."""

from __future__ import annotations

from collections.abc import Mapping

from tunegate.config import GateConfig, PipelineConfig
from tunegate.evaluation.evaluate import TASK, EvalOutcome
from tunegate.evaluation.stage import outcome
from tunegate.release.gates import GateResult, paired_bounds, per_item, same_items, say, three_way


class HeldoutGain:
    """`gates.metric` per held-out item, adapter against base, must gain `min_heldout_gain`."""

    name = "heldout_gain"

    def evaluate(
        self,
        config: PipelineConfig,
        base_evals: list[EvalOutcome],
        adapter_evals: list[EvalOutcome],
    ) -> list[GateResult]:
        metric = config.gates.metric
        base, tuned = outcome(base_evals, TASK), outcome(adapter_evals, TASK)
        if metric not in base.metrics or metric not in tuned.metrics:
            raise KeyError(
                f"gates.metric {metric!r} is not a held-out metric ({sorted(base.metrics)})"
            )
        return [heldout_gain_gate(per_item(base, metric), per_item(tuned, metric), config.gates)]


def heldout_gain_gate(
    base: Mapping[str, float], adapter: Mapping[str, float], config: GateConfig
) -> GateResult:
    """The adapter must beat the base model on the held-out metric by `min_heldout_gain`.

    `base` and `adapter` map item id -> the per-item held-out metric (`config.metric`). Pass:
    the one-sided lower bound of the mean gain per item reaches the minimum; fail: even the
    upper bound is below it (a no-op adapter: gain 0 on every item); else inconclusive.
    """
    gate, minimum = HeldoutGain.name, config.min_heldout_gain
    if (broken := same_items(gate, base, adapter, minimum)) is not None:
        return broken
    diff = paired_bounds(base, adapter, config.confidence, config.bootstrap_iters)
    verdict = three_way(diff.low, diff.high, minimum)
    b = sum(base.values()) / len(base)
    value = diff.low if verdict == "pass" else diff.high
    reason = (
        f"{config.metric}: adapter {b + diff.mean:.3f} vs base {b:.3f} on {diff.n} items, "
        f"gain {diff.mean:+.3f}, {config.confidence:.0%} bounds [{diff.low:+.3f}, "
        f"{diff.high:+.3f}] against the minimum {minimum:+.3f}: {say(verdict)}"
    )
    return GateResult(gate, verdict, value, minimum, reason, diff.low, diff.high, diff.n)
