"""Promotion gates: each tests one property of an adapter against the base model.

A gate has three outcomes, read off a one-sided confidence interval of a paired per-item
difference (adapter - base on the same items):

- `pass`: the evidence shows the property holds (a non-inferiority test for "no
  forgetting": the lower bound of adapter - base is above -max_drop);
- `fail`: the evidence shows it does not (the upper bound is below -max_drop);
- `inconclusive`: too few items, or too noisy a score, to tell either way.

A release needs `pass`: "no harm found" is not "shown harmless". Each verdict is stored with
its value, threshold, interval and a one-line reason, so a refusal explains itself in the
lineage and in `tunegate lineage`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tunegate.config import GateConfig, GeneralGateConfig
from tunegate.evaluation.sequential import Look, normal_bounds
from tunegate.evaluation.stats import Interval, paired_difference

Outcome = Literal["pass", "fail", "inconclusive"]
OUTCOMES: tuple[Outcome, ...] = ("pass", "fail", "inconclusive")


@dataclass(frozen=True)
class GateResult:
    gate: str
    outcome: Outcome
    value: float  # the bound the outcome was read from (lower bound if pass, else upper)
    threshold: float
    reason: str
    low: float = float("nan")  # one-sided confidence bounds of the paired difference
    high: float = float("nan")
    n: int = 0  # items the decision used
    look: Look | None = None  # sequential evaluation: the look the decision was read at

    @property
    def passed(self) -> bool:
        """Only `pass` passes: readers that know just pass/fail stay on the safe side."""
        return self.outcome == "pass"


def three_way(low: float, high: float, threshold: float) -> Outcome:
    """`pass` when the whole interval is at or above `threshold`, `fail` when it is all
    below, `inconclusive` when it straddles it."""
    if low >= threshold:
        return "pass"
    if high < threshold:
        return "fail"
    return "inconclusive"


def paired_bounds(
    base: Mapping[str, float], adapter: Mapping[str, float], confidence: float, iters: int
) -> Interval:
    """One-sided `confidence` lower and upper bounds of mean(adapter - base), item by item.

    A two-sided percentile interval at 2c - 1 has the one-sided c bounds as its ends.
    """
    items = sorted(base)
    return paired_difference([base[i] for i in items], [adapter[i] for i in items],
                             confidence=2 * confidence - 1, iters=iters)  # fmt: skip


def _same_items(gate: str, base: Mapping[str, float], adapter: Mapping[str, float],
                threshold: float) -> GateResult | None:  # fmt: skip
    if base and set(base) == set(adapter):
        return None
    return GateResult(gate, "fail", float("nan"), threshold,
                      f"base and adapter were not scored on the same items "
                      f"({len(base)} vs {len(adapter)})")  # fmt: skip


def heldout_gain_gate(
    base: Mapping[str, float], adapter: Mapping[str, float], config: GateConfig
) -> GateResult:
    """The adapter must beat the base model on the held-out metric by `min_heldout_gain`.

    `base` and `adapter` map item id -> the per-item held-out metric (`config.metric`). Pass:
    the one-sided lower bound of the mean gain per item reaches the minimum; fail: even the
    upper bound is below it (a no-op adapter: gain 0 on every item); else inconclusive.
    """
    gate, minimum = "heldout_gain", config.min_heldout_gain
    if (broken := _same_items(gate, base, adapter, minimum)) is not None:
        return broken
    diff = paired_bounds(base, adapter, config.confidence, config.bootstrap_iters)
    outcome = three_way(diff.low, diff.high, minimum)
    b = sum(base.values()) / len(base)
    value = diff.low if outcome == "pass" else diff.high
    reason = (
        f"{config.metric}: adapter {b + diff.mean:.3f} vs base {b:.3f} on {diff.n} items, "
        f"gain {diff.mean:+.3f}, {config.confidence:.0%} bounds [{diff.low:+.3f}, "
        f"{diff.high:+.3f}] against the minimum {minimum:+.3f}: {_say(outcome)}"
    )
    return GateResult(gate, outcome, value, minimum, reason, diff.low, diff.high, diff.n)


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
    gate, limit = f"general_{task}", config.drop_limit(task)
    if (broken := _same_items(gate, base, adapter, -limit)) is not None:
        return GateResult(gate, "fail", broken.value, -limit, f"{task}: {broken.reason}")
    diff = (paired_bounds(base, adapter, config.confidence, config.bootstrap_iters) if look is None
            else normal_bounds([adapter[i] - base[i] for i in sorted(base)], look.z))  # fmt: skip
    outcome = three_way(diff.low, diff.high, -limit)
    b = sum(base.values()) / len(base)
    value = diff.low if outcome == "pass" else diff.high
    reason = (
        f"{task} {config.metric}: adapter {b + diff.mean:.3f} vs base {b:.3f} on {diff.n} "
        f"items, change {diff.mean:+.3f}, {config.confidence:.0%} bounds [{diff.low:+.3f}, "
        f"{diff.high:+.3f}] against the tolerated drop {-limit:+.3f}: {_say(outcome)}"
    ) + (f"; {look.describe()}" if look else "")
    return GateResult(gate, outcome, value, -limit, reason, diff.low, diff.high, diff.n, look)


def _say(outcome: Outcome) -> str:
    return {"pass": "pass (the whole interval clears it)",
            "fail": "FAIL (the whole interval misses it)",
            "inconclusive": "inconclusive (the interval straddles it)"}[outcome]  # fmt: skip
