"""Group-sequential stopping: the spending functions, the boundaries, and by simulation the
error rate the gate states (false pass at most alpha when the adapter is exactly at the margin).
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from tunegate.evaluation.sequential import (
    SPENDING,
    boundaries,
    design,
    look_outcome,
    look_sizes,
)

pytestmark = pytest.mark.unit

ALPHA, MARGIN, SD = 0.05, 0.02, 0.082  # gate defaults; SD: p_gold's paired sd (sizing.py)


@pytest.mark.parametrize("name", sorted(SPENDING))
def test_spending_grows_from_nothing_to_alpha(name):
    spend = SPENDING[name]
    ts = np.linspace(0, 1, 51)
    spent = [spend(float(t), ALPHA) for t in ts]
    assert spent[0] == 0 and spent[-1] == pytest.approx(ALPHA)
    assert all(b >= a for a, b in pairwise(spent))  # O'Brien-Fleming: ~0 early on
    assert all(b > a for a, b in pairwise(spent[5:]))


def test_obrien_fleming_boundaries_match_the_published_ones():
    """gsDesign's sfLDOF, 5 equally spaced looks, one-sided alpha 0.025 (Jennison & Turnbull
    2000, table 7.5 gives the same to 2 decimals)."""
    z = boundaries((0.2, 0.4, 0.6, 0.8, 1.0), 0.025, "obrien_fleming")
    assert z == pytest.approx((4.8769, 3.3569, 2.6803, 2.2898, 2.0310), abs=1e-3)


def test_pocock_boundaries_match_the_published_ones():
    """gsDesign's sfLDPocock, 5 equally spaced looks, one-sided alpha 0.025."""
    z = boundaries((0.2, 0.4, 0.6, 0.8, 1.0), 0.025, "pocock")
    assert z == pytest.approx((2.4380, 2.4268, 2.4102, 2.3966, 2.3860), abs=1e-3)


def test_one_look_is_the_fixed_size_test_and_more_looks_cost_a_wider_last_one():
    assert design(80, 100, ALPHA).z == pytest.approx((1.6449,), abs=1e-4)
    obf, poc = design(500, 100, ALPHA), design(500, 100, ALPHA, "pocock")
    assert obf.sizes == poc.sizes == (100, 200, 300, 400, 500)
    assert list(obf.z) == sorted(obf.z, reverse=True)  # strict early, near fixed-size late
    assert 1.6449 < obf.z[-1] < poc.z[-1] < obf.z[1]


def test_looks_fall_on_chunks_and_always_on_the_full_size():
    assert look_sizes(500, 100) == (100, 200, 300, 400, 500)
    assert look_sizes(120, 100) == (100, 120)
    assert look_sizes(50, 100) == (50,)


def run_sequence(diff: np.ndarray, z: tuple[float, ...], sizes: tuple[int, ...]) -> tuple[str, int]:
    """The gate over the looks of one simulated paired sequence: (outcome, items used)."""
    for k, n in enumerate(sizes):
        verdict = look_outcome(diff[:n], z[k], -MARGIN)
        if verdict is not None:
            return verdict, n
    return "inconclusive", sizes[-1]


@pytest.mark.parametrize("spending", sorted(SPENDING))
def test_a_harmful_adapter_at_the_margin_passes_at_most_alpha_of_the_time(spending):
    """True change exactly -max_drop: every pass is a false pass. Over 4,000 sequences of
    500 items (p_gold-like sd, skewed), the false-pass rate stays within alpha plus 3 Monte
    Carlo standard errors, while stopping at a fixed z at every look would exceed it."""
    rng = np.random.default_rng(13)
    sims, full = 4000, 500
    d = design(full, 100, ALPHA, spending)
    noise = rng.gamma(2.0, 1.0, size=(sims, full))  # skewed, like a probability's change
    diffs = -MARGIN + SD * (noise - 2.0) / np.sqrt(2.0)
    outcomes = [run_sequence(row, d.z, d.sizes)[0] for row in diffs]
    false_pass = outcomes.count("pass") / sims
    slack = 3 * np.sqrt(ALPHA * (1 - ALPHA) / sims)
    assert false_pass <= ALPHA + slack, false_pass
    naive = [run_sequence(row, (1.6449,) * d.looks, d.sizes)[0] for row in diffs]
    assert naive.count("pass") / sims > ALPHA + slack  # why the spending is needed


def test_an_unchanged_adapter_passes_where_the_fixed_size_test_does_and_sooner():
    """Adapter = base: every difference 0, pass at the first look. A mildly perturbed but
    harmless adapter (mean change 0, p_gold-like sd) passes at the full size with the fixed
    test, and sequentially too, mostly before the last look."""
    d = design(500, 100, ALPHA)
    assert run_sequence(np.zeros(500), d.z, d.sizes) == ("pass", 100)
    rng = np.random.default_rng(0)
    used = []
    for _ in range(200):
        diff = rng.normal(0.0, SD, 500)
        fixed = look_outcome(diff, 1.6449, -MARGIN)
        outcome, n = run_sequence(diff, d.z, d.sizes)
        if fixed == "pass":
            assert outcome == "pass"
        used.append(n)
    assert np.mean(used) < 400  # the expected items fall well below the full 500
