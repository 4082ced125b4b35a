"""The recorded release stage: every configured gate, then the promotion decision."""

from __future__ import annotations

from collections.abc import Sequence

from tunegate.config import PipelineConfig
from tunegate.evaluation.evaluate import EvalOutcome
from tunegate.lineage import Lineage
from tunegate.release.gates import OUTCOMES, Gate, GateResult
from tunegate.release.gates.general_drop import GeneralDrop
from tunegate.release.gates.heldout_gain import HeldoutGain
from tunegate.release.promote import Decision, decide_promotion
from tunegate.training.train import TrainResult

# Every gate a release must pass, in the order they are recorded and reported. A new gate is a
# file in `tunegate/release/gates/` and one line here.
GATES: tuple[Gate, ...] = (
    HeldoutGain(),
    GeneralDrop(),
)


def run_gates(
    config: PipelineConfig, base_evals: list[EvalOutcome], adapter_evals: list[EvalOutcome]
) -> list[GateResult]:
    """Every verdict of every gate in `GATES`: held-out gain, then one no-forgetting verdict per
    general task."""
    return [result for gate in GATES for result in gate.evaluate(config, base_evals, adapter_evals)]


def gate_and_promote(
    config: PipelineConfig,
    lineage: Lineage,
    run_id: str,
    adapter: TrainResult,
    base_evals: list[EvalOutcome],
    adapter_evals: list[EvalOutcome],
) -> tuple[list[GateResult], Decision]:
    """Run every gate, record the verdicts, and promote only if all passed (or, for an alias
    in `promote.accept_inconclusive`, none failed)."""
    gates = run_gates(config, base_evals, adapter_evals)
    alias = config.promote.alias
    decision = decide_promotion(lineage, run_id, adapter.adapter_id, adapter.adapter_dir, alias,
                                gates, alias in config.promote.accept_inconclusive)  # fmt: skip
    return gates, decision


def gate_summary(gates: Sequence[GateResult], promoted: bool) -> str:
    """ "passed" or "refused", with the gates' outcomes counted: "passed (4 pass)",
    "refused (3 pass, 1 inconclusive)"."""
    counts = [f"{n} {o}" for o in OUTCOMES if (n := sum(g.outcome == o for g in gates))]
    head = "passed" if promoted else "refused"
    return f"{head} ({', '.join(counts)})" if counts else head
