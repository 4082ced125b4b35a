"""Promotion at the end of a pipeline run: record every gate, then ask the registry.

The registry (`tunegate/release/registry.py`) moves the alias only when every gate recorded here
passed on the very files that are in the adapter directory now.
"""

from __future__ import annotations

from pathlib import Path

from tunegate.lineage import Lineage
from tunegate.release.gates import GateResult
from tunegate.release.registry import Decision, actor, files_digest, promote


def decide_promotion(
    lineage: Lineage,
    run_id: str,
    adapter_id: str,
    adapter_dir: Path,
    alias: str,
    gates: list[GateResult],
    accept_inconclusive: bool = False,
) -> Decision:
    """Record every gate with the digest of the files it judged, then promote or refuse
    (`accept_inconclusive`: the alias's policy takes inconclusive gates, never failed ones)."""
    digest = files_digest(adapter_dir)
    for g in gates:
        lineage.record_gate(run_id, adapter_id, g.gate, g.passed, g.value, g.threshold, g.reason,
                            digest, outcome=g.outcome, low=g.low, high=g.high, n_items=g.n,
                            look=g.look.index if g.look else None,
                            looks=g.look.looks if g.look else None)  # fmt: skip
    if not gates:
        reason = "refused: no gate ran, nothing vouches for this adapter"
        lineage.record_promotion(adapter_id, alias, "refused", reason, actor(), run_id)
        return Decision(adapter_id, alias, False, reason, "refused")
    return promote(
        lineage, str(adapter_dir), alias, run_id=run_id, accept_inconclusive=accept_inconclusive
    )  # these files, as judged
