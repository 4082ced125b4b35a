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

A gate is a `Gate`: a name, and `evaluate`, which reads the gate's paired per-item scores from
the eval outcomes and its settings from the config, and returns its verdicts. One file per gate
in this package; `tunegate/release/stage.py` lists the configured ones in `GATES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tunegate.evaluation.sequential import Look
from tunegate.evaluation.stats import Interval, Outcome, paired_difference
from tunegate.evaluation.stats import three_way as three_way  # the gates' toolkit, re-exported

if TYPE_CHECKING:
    from tunegate.config import PipelineConfig
    from tunegate.evaluation.evaluate import EvalOutcome

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


class Gate(Protocol):
    """One property an adapter must show before release, judged against the base model."""

    name: str  # recorded with each verdict; a gate with one verdict per task appends the task

    def evaluate(
        self,
        config: PipelineConfig,
        base_evals: list[EvalOutcome],
        adapter_evals: list[EvalOutcome],
    ) -> list[GateResult]:
        """The verdicts, from the paired per-item scores this gate reads in the outcomes and
        its section of `config`."""
        ...


def per_item(o: EvalOutcome, metric: str) -> dict[str, float]:
    """item id -> one metric of that item."""
    return {s.item_id: s.scores[metric] for s in o.samples}


def paired_bounds(
    base: Mapping[str, float], adapter: Mapping[str, float], confidence: float, iters: int
) -> Interval:
    """One-sided `confidence` lower and upper bounds of mean(adapter - base), item by item.

    A two-sided percentile interval at 2c - 1 has the one-sided c bounds as its ends.
    """
    items = sorted(base)
    return paired_difference([base[i] for i in items], [adapter[i] for i in items],
                             confidence=2 * confidence - 1, iters=iters)  # fmt: skip


def same_items(gate: str, base: Mapping[str, float], adapter: Mapping[str, float],
               threshold: float) -> GateResult | None:  # fmt: skip
    """None when base and adapter were scored on the same (non-empty) items, else the failed
    verdict that says so: a gate never compares scores of different items."""
    if base and set(base) == set(adapter):
        return None
    return GateResult(gate, "fail", float("nan"), threshold,
                      f"base and adapter were not scored on the same items "
                      f"({len(base)} vs {len(adapter)})")  # fmt: skip


def say(outcome: Outcome) -> str:
    """The outcome as a reason ends it."""
    return {"pass": "pass (the whole interval clears it)",
            "fail": "FAIL (the whole interval misses it)",
            "inconclusive": "inconclusive (the interval straddles it)"}[outcome]  # fmt: skip
