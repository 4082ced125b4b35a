"""The record contract: the properties every canonical conversation must have.

Each property is checked and every failure of a row is reported, not just the first,
so a data team fixes a row once.
"""

from __future__ import annotations

from tunegate.records import ROLES, Record


def contract_failures(record: Record) -> list[str]:
    """All contract failures of one record as 'field: reason' strings (empty when valid)."""
    failures: list[str] = []
    turns = [(i, r, c) for i, (r, c) in enumerate(record.messages) if r != "system"]
    for i, (role, content) in enumerate(record.messages):
        if role not in ROLES:
            failures.append(f"messages[{i}].role: {role!r} is not one of {', '.join(ROLES)}")
        if not content.strip():
            failures.append(f"messages[{i}].content: empty ({role})")
        if role == "system" and i != 0:
            failures.append(f"messages[{i}].role: system turn only allowed first")
    if not turns:
        failures.append("messages: no user or assistant turn")
        return failures
    for k, (i, role, _) in enumerate(turns):
        expected = "user" if k % 2 == 0 else "assistant"
        if role != expected:
            failures.append(f"messages[{i}].role: expected {expected} (turns must alternate)")
            break
    if turns[-1][1] != "assistant":
        failures.append(f"messages[{turns[-1][0]}].role: last turn must be assistant")
    return failures


class RecordContract:
    """Rejects records that break the contract (`schema`), listing every failure."""

    reason = "schema"

    def __call__(self, record: Record) -> str | None:
        failures = contract_failures(record)
        return "; ".join(failures) if failures else None

    def accept(self, record: Record) -> None:
        pass
