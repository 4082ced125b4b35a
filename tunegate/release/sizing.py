"""Can a gate be conclusive at the configured size? The items a non-inferiority decision needs.

The general gate passes when the one-sided lower bound of mean(adapter - base) clears
-max_drop. For an adapter that changed nothing on average, that bound sits about
z * sd / sqrt(n) below 0, and the mean itself wanders by sd / sqrt(n), so the gate shows
non-inferiority with 80% probability once

    n >= ((z_confidence + z_0.80) * sd / max_drop) ** 2

where sd is the standard deviation of the per-item difference. A 0/1 score (acc, acc_norm)
also cannot move by less than 1 / n. Evaluated sequentially (`eval.general.sequential`), the
last look reads a wider bound than the fixed-size test (alpha was partly spent on earlier
looks), so z_confidence becomes that look's critical value and n grows a little.
`tunegate validate` refuses a configuration whose `eval.general.limit` is below that n,
and says the n needed (`tunegate run` still runs a small smoke configuration; its gates then
come out inconclusive, never pass by default).
"""

from __future__ import annotations

import math
from statistics import NormalDist

from tunegate.config import PipelineConfig, SequentialConfig
from tunegate.evaluation.sequential import design

ITEMS_PER_FILE = 500  # the shipped general files (evals/data/general/)
POWER = 0.8  # chance that an unchanged adapter is shown non-inferior at the n asked for

# sd of the per-item adapter - base difference, per score, measured with `bench/gate_power.py`
# for a mild perturbation (random LoRA at alpha / r = 0.5, every linear layer; PIQA, 50
# items; README "Evaluation and gates"): p_gold 0.082, acc_norm 0.314 (0/1 scores: an item
# flips with probability f, sd ~ sqrt(f)). acc moved on no item there; it gets acc_norm's.
PAIRED_SD = {"p_gold": 0.082, "acc": 0.314, "acc_norm": 0.314}
BINARY = ("acc", "acc_norm")


def items_needed(
    metric: str, margin: float, confidence: float, power: float = POWER,
    critical: float | None = None,
) -> int:  # fmt: skip
    """Items per task for the gate to show non-inferiority of an unchanged adapter at `margin`
    with probability `power` (math.inf-like huge number for a margin of 0); `critical`: the
    one-sided critical z the decisive bound is read with (default: the fixed test's)."""
    if margin <= 0:
        return math.inf  # type: ignore[return-value]  # nothing shows a difference >= 0
    z = (critical or NormalDist().inv_cdf(confidence)) + NormalDist().inv_cdf(power)
    n = math.ceil((z * PAIRED_SD[metric] / margin) ** 2)
    if metric in BINARY:
        n = max(n, math.ceil(1 / margin))  # one item flipping moves a share by 1 / n
    return n


def items_needed_sequential(
    metric: str, margin: float, confidence: float, sequential: SequentialConfig
) -> int:
    """`items_needed` when the last look of a sequential design decides: the smallest n at
    which that look's critical value still shows the margin (more looks, a wider last one)."""
    n = items_needed(metric, margin, confidence)
    for _ in range(10):  # converges in two or three steps: z grows slowly with the looks
        if not sequential.enabled or n == math.inf:
            return n
        last = design(n, sequential.chunk, 1 - confidence, sequential.spending).z[-1]
        wider = items_needed(metric, margin, confidence, critical=last)
        if wider <= n:
            return n
        n = wider
    return n


def sizing_problems(config: PipelineConfig) -> list[tuple[str, str]]:
    """(key, why) for each general task whose gate cannot be conclusive at the configured n."""
    general, gate = config.eval.general, config.gates.general
    n = min(general.limit or ITEMS_PER_FILE, ITEMS_PER_FILE)
    problems = []
    for task in general.tasks:
        margin = gate.drop_limit(task)
        needed = items_needed_sequential(gate.metric, margin, gate.confidence, general.sequential)
        if needed <= n:
            continue
        key = (f"gates.general.max_drop_per_task.{task}" if task in gate.max_drop_per_task
               else "gates.general.max_drop")  # fmt: skip
        if margin <= 0:
            why = "a margin of 0 can never be shown: the gate would never pass (use > 0)"
        else:
            where = (f"set eval.general.limit to at least {needed}" if needed <= ITEMS_PER_FILE
                     else f"more than the {ITEMS_PER_FILE} items the shipped file holds: "
                     f"raise the margin or gate on p_gold")  # fmt: skip
            why = (
                f"{task}: a {margin:g} margin on {gate.metric} cannot be shown at {n} items "
                f"(per-item difference sd ~{PAIRED_SD[gate.metric]:g}, "
                f"{gate.confidence:.0%} one-sided): needs n >= {needed}; {where}"
            )
        problems.append((key, why))
    return problems
