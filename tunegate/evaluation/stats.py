"""Confidence intervals for eval scores: how much of a difference is noise.

Base and adapter answer the same items, so their difference is measured per item and
resampled in pairs: item difficulty cancels out, and the interval is far narrower than
two independent intervals would suggest. Seeded, so a gate's verdict is repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

Outcome = Literal["pass", "fail", "inconclusive"]


def three_way(low: float, high: float, threshold: float) -> Outcome:
    """The decision an interval supports against `threshold`: `pass` when it is wholly at or
    above, `fail` when wholly below, `inconclusive` when it straddles it. The gates and the
    sequential looks both decide here."""
    if low >= threshold:
        return "pass"
    if high < threshold:
        return "fail"
    return "inconclusive"


@dataclass(frozen=True)
class Interval:
    """A mean with a two-sided confidence interval [low, high]."""

    mean: float
    low: float
    high: float
    confidence: float
    n: int


def mean_interval(
    values: Sequence[float],
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> Interval:
    """Normal-approximation interval of a mean (the stderr lm-eval reports, times z), clipped
    to `bounds` (a share never leaves [0, 1], however few the items)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    stderr = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else 0.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    low, high = max(mean - z * stderr, bounds[0]), min(mean + z * stderr, bounds[1])
    return Interval(mean, float(low), float(high), confidence, int(x.size))


def paired_difference(
    base: Sequence[float],
    adapter: Sequence[float],
    confidence: float = 0.95,
    iters: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile paired-bootstrap interval of mean(adapter - base) over the same items."""
    if len(base) != len(adapter):
        raise ValueError(f"paired scores differ in length: {len(base)} vs {len(adapter)}")
    diff = np.asarray(adapter, dtype=float) - np.asarray(base, dtype=float)
    if diff.size == 0:
        raise ValueError("no paired items")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(iters, diff.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(diff.mean()), float(low), float(high), confidence, int(diff.size))
