"""Promotion gates: each tests one property of an adapter against the base model.

A gate passes or fails with a value, a threshold and a one-line reason, all stored,
so a refusal explains itself in the lineage and in `tunegate lineage`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tunegate.config import GateConfig, GeneralGateConfig
from tunegate.stats import paired_difference


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    value: float
    threshold: float
    reason: str


def heldout_gain_gate(
    base: dict[str, tuple[float, float | None]],
    adapter: dict[str, tuple[float, float | None]],
    config: GateConfig,
) -> GateResult:
    """The adapter must beat the base model on the held-out metric by `min_heldout_gain`."""
    if config.metric not in base or config.metric not in adapter:
        why = f"metric {config.metric!r} missing from the held-out results"
        return GateResult("heldout_gain", False, float("nan"), config.min_heldout_gain, why)
    b, a = base[config.metric][0], adapter[config.metric][0]
    gain = a - b
    passed = gain >= config.min_heldout_gain
    verdict = "passes" if passed else "below"
    reason = (
        f"{config.metric}: adapter {a:.3f} vs base {b:.3f}, gain {gain:+.3f} {verdict} "
        f"the minimum {config.min_heldout_gain:+.3f}"
    )
    return GateResult("heldout_gain", passed, gain, config.min_heldout_gain, reason)


def general_drop_gate(
    task: str,
    base: Mapping[str, float],
    adapter: Mapping[str, float],
    config: GeneralGateConfig,
) -> GateResult:
    """The adapter may not lose more than `max_drop` on a general task, beyond noise.

    `base` and `adapter` map item id -> per-item metric (`config.metric`) on the same items.
    The paired bootstrap gives a one-sided upper confidence bound of mean(adapter - base);
    the gate refuses when even that bound is below -max_drop: the adapter is, with
    `confidence`, more than `max_drop` worse. A small drop, or a large one that a small
    sample cannot tell from noise, passes; more items (`eval.general.limit`) tighten it.
    """
    gate, limit = f"general_{task}", config.drop_limit(task)
    if not base or set(base) != set(adapter):
        return GateResult(gate, False, float("nan"), -limit,
                          f"{task}: base and adapter were not scored on the same items "
                          f"({len(base)} vs {len(adapter)})")  # fmt: skip
    items = sorted(base)
    # A two-sided interval at 2c - 1 has the one-sided c bound as its upper end.
    diff = paired_difference([base[i] for i in items], [adapter[i] for i in items],
                             confidence=2 * config.confidence - 1,
                             iters=config.bootstrap_iters)  # fmt: skip
    b = sum(base.values()) / len(base)
    passed = diff.high >= -limit
    verdict = "within" if passed else "beyond"
    reason = (
        f"{task} {config.metric}: adapter {b + diff.mean:.3f} vs base {b:.3f} on {diff.n} items, "
        f"change {diff.mean:+.3f}, {config.confidence:.0%} upper bound {diff.high:+.3f} {verdict} "
        f"the tolerated drop {-limit:+.3f}"
    )
    return GateResult(gate, passed, diff.high, -limit, reason)
