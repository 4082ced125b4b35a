"""Exact duplicate removal over the whole conversation.

Deterministic: rows are seen in source order and the first accepted occurrence is
kept, so re-running on the same files rejects the same rows.
"""

from __future__ import annotations

from tunegate.records import Record, conversation_key


class ExactDuplicates:
    """Rejects a conversation equal (NFKC, case, whitespace) to an accepted one."""

    reason = "exact_duplicate"

    def __init__(self) -> None:
        # One hash per kept row: memory grows with accepted rows, not with input size.
        self._first: dict[str, str] = {}

    def __call__(self, record: Record) -> str | None:
        earlier = self._first.get(conversation_key(record.messages))
        return None if earlier is None else f"same conversation as {earlier}"

    def accept(self, record: Record) -> None:
        where = f"{record.source}:{record.source_row} (record {record.record_id[:12]})"
        self._first.setdefault(conversation_key(record.messages), where)
