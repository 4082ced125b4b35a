"""Promotion gates: each tests one property of an adapter against the base model.

A gate passes or fails with a value, a threshold and a one-line reason, all stored,
so a refusal explains itself in the lineage and in `tunegate lineage`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunegate.config import GateConfig


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
        return GateResult("heldout_gain", False, float("nan"), config.min_heldout_gain,
                          f"metric {config.metric!r} missing from the held-out results")  # fmt: skip
    b, a = base[config.metric][0], adapter[config.metric][0]
    gain = a - b
    passed = gain >= config.min_heldout_gain
    verdict = "passes" if passed else "below"
    reason = (
        f"{config.metric}: adapter {a:.3f} vs base {b:.3f}, gain {gain:+.3f} {verdict} "
        f"the minimum {config.min_heldout_gain:+.3f}"
    )
    return GateResult("heldout_gain", passed, gain, config.min_heldout_gain, reason)
