"""Gates: held-out gain, and the noise-aware general-capability (no forgetting) gate."""

from __future__ import annotations

import random

import pytest

from tunegate.config import GateConfig, GeneralGateConfig
from tunegate.evaluation.stats import mean_interval, paired_difference
from tunegate.release.gates.general_drop import general_drop_gate
from tunegate.release.gates.heldout_gain import heldout_gain_gate

pytestmark = pytest.mark.unit


def scores(values: list[float]) -> dict[str, float]:
    return {f"item-{i:03d}": v for i, v in enumerate(values)}


def coin_flips(n: int, p: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.random() < p) for _ in range(n)]


# --- stats ---------------------------------------------------------------------------------


def test_paired_difference_is_exact_for_a_constant_shift_and_seeded():
    base = [0.1, 0.5, 0.9, 0.3]
    diff = paired_difference(base, [b - 0.2 for b in base])
    assert (diff.mean, diff.low, diff.high) == pytest.approx((-0.2, -0.2, -0.2))
    noisy = coin_flips(200, 0.6, 1), coin_flips(200, 0.6, 2)
    assert paired_difference(*noisy) == paired_difference(*noisy)  # same seed, same interval


def test_pairing_is_narrower_than_two_independent_intervals():
    base = coin_flips(300, 0.6, 3)
    adapter = [1.0 - b if i % 15 == 0 else b for i, b in enumerate(base)]  # 20 items flip
    paired = paired_difference(base, adapter)
    a, b = mean_interval(adapter), mean_interval(base)
    independent = ((a.high - a.low) ** 2 + (b.high - b.low) ** 2) ** 0.5  # width, unpaired
    assert paired.high - paired.low < independent / 2


def test_paired_difference_refuses_unpaired_input():
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0, 0.0], [1.0])


# --- held-out gain -------------------------------------------------------------------------


def test_no_op_adapter_fails_the_heldout_gain_gate():
    same = scores([0.0, 1 / 3, 2 / 3, 1.0] * 10)
    gate = heldout_gain_gate(same, dict(same), GateConfig())
    assert gate.outcome == "fail" and not gate.passed
    assert gate.value == 0.0 and gate.threshold == 0.2 and gate.n == 40
    assert "gain +0.000" in gate.reason and gate.reason.endswith("misses it)")


def test_heldout_gain_gate_passes_a_real_gain_and_is_inconclusive_on_a_noisy_one():
    base = [0.0] * 40
    gate = heldout_gain_gate(scores(base), scores([1.0] * 30 + [0.0] * 10), GateConfig())
    assert gate.outcome == "pass" and gate.passed and gate.low >= 0.2
    # A mean gain of 0.3 on 6 items, two of them carrying it all: cannot tell from 0.2.
    noisy = heldout_gain_gate(scores([0.0] * 6), scores([0.0] * 4 + [0.9, 0.9]), GateConfig())
    assert noisy.outcome == "inconclusive" and not noisy.passed
    assert noisy.low < 0.2 <= noisy.high


# --- general (no forgetting) ---------------------------------------------------------------


def test_identical_scores_pass():
    base = scores(coin_flips(100, 0.6, 4))
    gate = general_drop_gate("piqa", base, dict(base), GeneralGateConfig())
    assert gate.outcome == "pass" and gate.gate == "general_piqa" and gate.value == 0.0
    assert gate.threshold == -0.02 and gate.n == 100


def test_damaged_adapter_fails_with_its_numbers():
    base = coin_flips(200, 0.65, 5)
    damaged = [b if i % 3 else 0.0 for i, b in enumerate(base)]  # a third of the right answers lost
    config = GeneralGateConfig(metric="acc_norm")
    gate = general_drop_gate("piqa", scores(base), scores(damaged), config)
    assert gate.outcome == "fail" and gate.value < -0.02 and gate.high < -0.02
    assert gate.reason.startswith("piqa acc_norm: adapter ")
    assert "against the tolerated drop -0.020: FAIL" in gate.reason


def test_a_drop_noise_can_explain_is_inconclusive_and_more_items_decide():
    # 6 of 40 items flip to wrong, 2 to right (-10 points): too few to tell...
    base = [1.0] * 20 + [0.0] * 20
    small = [0.0] * 6 + [1.0] * 14 + [1.0] * 2 + [0.0] * 18
    gate = general_drop_gate("arc_easy", scores(base), scores(small), GeneralGateConfig())
    assert gate.outcome == "inconclusive" and not gate.passed
    # ...the same 10-point drop on 400 items is forgetting.
    gate = general_drop_gate("arc_easy", scores(base * 10), scores(small * 10), GeneralGateConfig())
    assert gate.outcome == "fail"


def test_binary_scores_leave_a_harmless_adapter_inconclusive_where_a_continuous_one_passes():
    """The same no-harm adapter on 50 items: 0/1 accuracy flips a few items either way and
    cannot show non-inferiority at a 2-point margin; a continuous score moving by a little
    on every item can."""
    rng = random.Random(7)
    acc = coin_flips(50, 0.7, 8)
    flipped = [1.0 - a if i in (3, 17, 29, 41) else a for i, a in enumerate(acc)]  # 2 up, 2 down
    binary = general_drop_gate("piqa", scores(acc), scores(flipped), GeneralGateConfig())
    assert sum(flipped) == sum(acc) and binary.outcome == "inconclusive"
    p = [rng.uniform(0.3, 0.9) for _ in range(50)]
    p2 = [min(1.0, max(0.0, x + rng.gauss(0.0, 0.02))) for x in p]
    continuous = general_drop_gate("piqa", scores(p), scores(p2), GeneralGateConfig())
    assert continuous.outcome == "pass" and continuous.low > -0.02


def test_per_task_tolerance_overrides_the_default():
    base = [1.0] * 100 + [0.0] * 100
    worse = [0.0] * 10 + [1.0] * 90 + [0.0] * 100  # -5 points, every flip a loss
    strict = GeneralGateConfig(max_drop=0.0)
    lenient = GeneralGateConfig(max_drop=0.0, max_drop_per_task={"hellaswag": 0.2})
    assert general_drop_gate("hellaswag", scores(base), scores(worse), strict).outcome == "fail"
    assert general_drop_gate("hellaswag", scores(base), scores(worse), lenient).passed
    assert lenient.drop_limit("piqa") == 0.0


def test_different_items_fail_the_gate():
    gate = general_drop_gate("piqa", {"a": 1.0}, {"b": 1.0}, GeneralGateConfig())
    assert gate.outcome == "fail" and "not scored on the same items" in gate.reason
