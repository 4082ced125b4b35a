"""Promotion: move a registry alias to an adapter only when every gate passed."""

from __future__ import annotations

import getpass
from dataclasses import dataclass

from tunegate.gates import GateResult
from tunegate.lineage import Lineage


@dataclass(frozen=True)
class Decision:
    adapter_id: str
    alias: str
    promoted: bool
    reason: str


def decide_promotion(
    lineage: Lineage, run_id: str, adapter_id: str, alias: str, gates: list[GateResult]
) -> Decision:
    """Record every gate, then promote (all passed) or refuse (naming the failed gates)."""
    for g in gates:
        lineage.record_gate(run_id, adapter_id, g.gate, g.passed, g.value, g.threshold, g.reason)
    failed = [g for g in gates if not g.passed]
    if not gates:
        reason = "no gate ran: nothing vouches for this adapter"
    elif failed:
        reason = "refused: " + "; ".join(f"{g.gate} ({g.reason})" for g in failed)
    else:
        reason = "all gates passed: " + "; ".join(g.reason for g in gates)
    promoted = bool(gates) and not failed
    decision = "promoted" if promoted else "refused"
    lineage.record_promotion(adapter_id, alias, decision, reason, actor(), run_id)
    return Decision(adapter_id, alias, promoted, reason)


def actor() -> str:
    """Who made a decision: the OS user (a CI job's user in a release pipeline)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
