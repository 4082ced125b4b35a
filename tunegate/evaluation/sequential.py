"""Group-sequential non-inferiority: look at the paired scores after every chunk of items,
stop as soon as the gate is conclusive, and still keep its stated error rates.

Looking K times at a fixed one-sided z would pass a harmful adapter more often than
1 - confidence: each look is another chance for noise to clear the bound. Lan & DeMets
(1983, "Discrete sequential boundaries for clinical trials", Biometrika 70(3):659-663) spend
the error rate alpha over the information fraction t = n_k / N with a spending function
alpha(t), alpha(1) = alpha; look k gets the critical value c_k at which a statistic that has
not crossed before crosses now with probability alpha(t_k) - alpha(t_{k-1}) (computed here by
the recursive numerical integration of Armitage, McPherson & Rowe 1969, as in Jennison &
Turnbull 2000, ch. 19). Over all looks the false-pass rate is then at most alpha.

The gate stops for `pass` when mean - c_k * se clears -margin and for `fail` when
mean + c_k * se misses it, with the same c_k both ways: each boundary is computed as if the
other did not exist ("non-binding"), and stopping early on the other side only removes
chances to err, so each error rate stays at most alpha. The bounds are the repeated
confidence bounds of Jennison & Turnbull (1989): one-sided `confidence` at every look at
once. O'Brien-Fleming-type spending (the default) spends almost nothing early, so its last
look is nearly the fixed-size test and costs the full-size run little power; Pocock-type
spends evenly and stops earlier, at the cost of a wider last look.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Literal

import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr

from tunegate.evaluation.stats import Interval, three_way

Spending = Literal["obrien_fleming", "pocock"]
_GRID = 2001  # integration grid points per look: c_k within 1e-4 of gsDesign's (tests)
_LOW = -10.0  # the grid's lower end, in units of the Brownian motion's sd at t = 1


def obrien_fleming(t: float, alpha: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type spending: 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t))."""
    if t <= 0:
        return 0.0
    return 2.0 - 2.0 * NormalDist().cdf(NormalDist().inv_cdf(1 - alpha / 2) / math.sqrt(t))


def pocock(t: float, alpha: float) -> float:
    """Lan-DeMets Pocock-type spending: alpha * ln(1 + (e - 1) t)."""
    return alpha * math.log(1 + (math.e - 1) * max(t, 0.0))


SPENDING: dict[str, Callable[[float, float], float]] = {
    "obrien_fleming": obrien_fleming,
    "pocock": pocock,
}


@dataclass(frozen=True)
class Design:
    """Where the looks are (cumulative items) and the critical z of each."""

    sizes: tuple[int, ...]
    z: tuple[float, ...]

    @property
    def looks(self) -> int:
        return len(self.sizes)


@dataclass(frozen=True)
class Look:
    """Where a sequential evaluation stopped: look `index` (1-based) of `looks`, at `n` of the
    `full` items, read with critical value `z`."""

    index: int
    looks: int
    n: int
    full: int
    z: float

    def describe(self) -> str:
        return (f"sequential look {self.index} of {self.looks}: {self.n} of {self.full} items, "
                f"critical z {self.z:.2f}")  # fmt: skip


def look_sizes(full: int, chunk: int) -> tuple[int, ...]:
    """Cumulative items at each look: chunk, 2 chunk, ... and always the full set last."""
    if full < 1 or chunk < 1:
        raise ValueError(f"full ({full}) and chunk ({chunk}) must be >= 1")
    return (*range(chunk, full, chunk), full)


def design(full: int, chunk: int, alpha: float, spending: Spending = "obrien_fleming") -> Design:
    """The looks of a task with `full` items in chunks of `chunk`, at one-sided `alpha`."""
    sizes = look_sizes(full, chunk)
    z = boundaries(tuple(n / full for n in sizes), alpha, spending)
    return Design(sizes, z)


@lru_cache(maxsize=64)
def boundaries(fractions: tuple[float, ...], alpha: float, spending: str) -> tuple[float, ...]:
    """Critical z at each information fraction so that P(cross at look k, not before) under
    the null is alpha(t_k) - alpha(t_{k-1}).

    B(t) = Z(t) sqrt(t) is a Brownian motion; its sub-density on "not crossed yet" is carried
    from look to look on a grid and convolved with the increment's normal density.
    """
    spend = SPENDING[spending]
    if not fractions or any(b <= a for a, b in zip((0.0, *fractions), fractions, strict=False)):
        raise ValueError(f"information fractions must increase from > 0: {fractions}")
    z: list[float] = []
    x, weights = np.empty(0), np.empty(0)  # grid and quadrature mass of B(t_{k-1}), not crossed
    prev_t, spent = 0.0, 0.0
    for k, t in enumerate(fractions):
        # 1. This look's critical value: it spends what the spending function allows now.
        target = spend(t, alpha) - spent
        sd = math.sqrt(t - prev_t)
        if target <= 0:
            c = math.inf
        elif k == 0:  # B(t_1) ~ N(0, t_1): no earlier look to condition on
            c = NormalDist().inv_cdf(1 - target)
        else:
            c = brentq(_excess, -10.0, 40.0, args=(t, x, weights, sd, target), xtol=1e-9)
        z.append(float(c))
        spent = spend(t, alpha)
        # 2. Carry the sub-density of B(t) below this look's boundary to the next look.
        new_x = np.linspace(_LOW, min(c, 12.0) * math.sqrt(t), _GRID)
        if k == 0:
            density = np.exp(-(new_x**2) / (2 * t)) / math.sqrt(2 * math.pi * t)
        else:
            kernel = np.exp(-((new_x[:, None] - x[None, :]) ** 2) / (2 * sd**2))
            density = (kernel / (sd * math.sqrt(2 * math.pi))) @ weights
        x, weights, prev_t = new_x, density * _trapezoid(new_x), t
    return tuple(z)


def _excess(
    c: float, t: float, x: np.ndarray, weights: np.ndarray, sd: float, target: float
) -> float:
    """P(not crossed before, Z(t) >= c) - target: the mass at x moves by a N(0, sd^2) step."""
    return float(weights @ (1.0 - ndtr((c * math.sqrt(t) - x) / sd))) - target


def _trapezoid(x: np.ndarray) -> np.ndarray:
    """Trapezoid-rule weights of an evenly spaced grid."""
    w = np.full(x.size, x[1] - x[0])
    w[0] = w[-1] = w[0] / 2
    return w


def normal_bounds(diff: Sequence[float], z: float) -> Interval:
    """mean +- z * se of the per-item differences: the bounds a look reads. Its `confidence`
    is the one-sided level of one look on its own, Phi(z)."""
    d = np.asarray(diff, dtype=float)
    if d.size == 0:
        raise ValueError("no paired items")
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    return Interval(mean, mean - z * se, mean + z * se, NormalDist().cdf(z), int(d.size))


def look_outcome(diff: Sequence[float], z: float, threshold: float) -> str | None:
    """`pass` or `fail` when this look is conclusive at `threshold` (-max_drop), else None."""
    bounds = normal_bounds(diff, z)
    verdict = three_way(bounds.low, bounds.high, threshold)
    return None if verdict == "inconclusive" else verdict
