"""Exact duplicate removal over the whole conversation.

Deterministic: rows are seen in source order and the first occurrence is kept, so
re-running on the same files rejects the same rows.
"""

from __future__ import annotations

from tunegate.records import Record, conversation_key


class ExactDeduper:
    """Remembers normalised conversations seen so far; memory is one hash per kept row."""

    def __init__(self) -> None:
        self._first: dict[str, tuple[str, int, str]] = {}

    def first_seen(self, record: Record) -> tuple[str, int, str] | None:
        """Where an earlier equal conversation stood (source, row, record id), or None."""
        key = conversation_key(record.messages)
        earlier = self._first.get(key)
        if earlier is None:
            self._first[key] = (record.source, record.source_row, record.record_id)
        return earlier
