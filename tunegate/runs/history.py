"""The data team's view across nights: each pipeline run's numbers, and what changed since the
night before.

A night is one `pipeline` run in the lineage, whatever its end (promoted, refused, failed,
or still running). Its numbers come from the rows every stage already records (verdicts,
sources, gates, promotions), so a night that failed before curation simply has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tunegate.lineage import Lineage

# A reason's share of input rows "jumps" when it grows by at least this many points and by
# at least this factor: 1% -> 3% on 400 rows is 8 rows and worth a look; 30% -> 33% is not.
SHARE_JUMP_POINTS = 0.02
SHARE_JUMP_FACTOR = 1.5
# A gate "moves toward its margin" when it loses at least half the headroom it had.
MARGIN_LOSS = 0.5
# Accepted rows "drop" when at least this share of the previous night's are gone.
ACCEPTED_DROP = 0.2


@dataclass(frozen=True)
class GateOutcome:
    gate: str
    passed: bool
    value: float
    threshold: float
    outcome: str | None = None  # pass | fail | inconclusive; None: from `passed` (pre-v5 rows)

    @property
    def state(self) -> str:
        return self.outcome or ("pass" if self.passed else "fail")

    @property
    def label(self) -> str:
        """How tables show the outcome: a failure stands out, inconclusive is neither."""
        return "FAIL" if self.state == "fail" else self.state

    @property
    def margin(self) -> float:
        """Headroom above the threshold; a gate passes at margin >= 0."""
        return self.value - self.threshold


@dataclass(frozen=True)
class Night:
    """One pipeline run, summarised for a data team."""

    run_id: str
    status: str  # promoted | refused | failed | running
    started_at: datetime
    ended_at: datetime | None
    detail: str | None
    rows_in: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> rows
    sources: dict[str, int] = field(default_factory=dict)  # path -> rows read
    gates: tuple[GateOutcome, ...] = ()
    promoted_adapter: str | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else (self.ended_at - self.started_at).total_seconds()

    def share(self, reason: str) -> float:
        return self.rejected.get(reason, 0) / self.rows_in if self.rows_in else 0.0


def run_history(lineage: Lineage, limit: int = 30) -> list[Night]:
    """The last `limit` pipeline runs, oldest first."""
    runs = lineage.query(
        "SELECT run_id, status, started_at, ended_at, detail FROM runs WHERE flow = 'pipeline' "
        "ORDER BY started_at DESC LIMIT ?",
        [limit],
    )
    ids = [r["run_id"] for r in runs]
    if not ids:
        return []
    where = "WHERE run_id IN (SELECT unnest(?::VARCHAR[]))"
    verdicts: dict[str, dict[str, int]] = {i: {} for i in ids}
    for r in lineage.query(
        "SELECT run_id, coalesce(reason, status) AS verdict, count(*) AS n FROM row_verdicts "
        f"{where} GROUP BY ALL",
        [ids],
    ):
        verdicts[r["run_id"]][r["verdict"]] = r["n"]
    sources: dict[str, dict[str, int]] = {i: {} for i in ids}
    for r in lineage.query(f"SELECT run_id, path, n_rows FROM sources {where}", [ids]):
        sources[r["run_id"]][r["path"]] = sources[r["run_id"]].get(r["path"], 0) + r["n_rows"]
    gates: dict[str, list[GateOutcome]] = {i: [] for i in ids}
    for r in lineage.query(
        "SELECT run_id, gate, passed, value, threshold, "
        "coalesce(outcome, CASE WHEN passed THEN 'pass' ELSE 'fail' END) AS outcome "
        f"FROM gate_results {where} "
        "ORDER BY created_at",
        [ids],
    ):
        gates[r["run_id"]].append(
            GateOutcome(r["gate"], r["passed"], r["value"], r["threshold"], r["outcome"])
        )
    promoted = {
        r["run_id"]: r["adapter_id"]
        for r in lineage.query(
            f"SELECT run_id, adapter_id FROM promotions {where} AND decision = 'promoted'", [ids]
        )
    }
    nights = []
    for r in reversed(runs):
        counts = verdicts[r["run_id"]]
        accepted = counts.pop("accepted", 0)
        nights.append(Night(
            run_id=r["run_id"], status=r["status"], started_at=r["started_at"],
            ended_at=r["ended_at"], detail=r["detail"], rows_in=accepted + sum(counts.values()),
            accepted=accepted, rejected=counts, sources=sources[r["run_id"]],
            gates=tuple(gates[r["run_id"]]), promoted_adapter=promoted.get(r["run_id"]),
        ))  # fmt: skip
    return nights


def changes(previous: Night | None, night: Night) -> list[str]:
    """What changed since the previous night that a data team should look at, one line each."""
    if previous is None:
        return []
    flags: list[str] = []
    if night.status != previous.status:
        flags.append(f"status {previous.status} → {night.status}")
    flags += [f"new source {path}" for path in night.sources if path not in previous.sources]
    flags += [f"source gone {path}" for path in previous.sources if path not in night.sources]
    if night.rows_in and previous.rows_in:
        for reason in sorted(night.rejected):
            before, now = previous.share(reason), night.share(reason)
            if now - before >= SHARE_JUMP_POINTS and now >= SHARE_JUMP_FACTOR * before:
                flags.append(f"{reason} share {before:.1%} → {now:.1%}")
        if night.accepted <= (1 - ACCEPTED_DROP) * previous.accepted:
            flags.append(f"accepted rows {previous.accepted} → {night.accepted}")
    before_gates = {g.gate: g for g in previous.gates}
    for gate in night.gates:
        was = before_gates.get(gate.gate)
        if was is None:
            continue
        if was.passed and not gate.passed:
            now_is = "fails" if gate.state == "fail" else f"is {gate.state}"
            flags.append(f"{gate.gate} now {now_is}: {was.value:+.3f} → {gate.value:+.3f} "
                         f"(threshold {gate.threshold:+.3f})")  # fmt: skip
        elif was.margin > 0 and gate.margin < (1 - MARGIN_LOSS) * was.margin:
            flags.append(f"{gate.gate} nearer its threshold: margin {was.margin:+.3f} → "
                         f"{gate.margin:+.3f} (threshold {gate.threshold:+.3f})")  # fmt: skip
    return flags
