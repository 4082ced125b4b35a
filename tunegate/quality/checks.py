"""The row-check protocol every curation check follows.

A check tests one property of one record and, when the record fails, returns the
detail that goes into `row_verdicts` under the check's reason code. Checks run in
order and the first failure decides a row's verdict, so order them cheap to costly.
Stateful checks (dedup, near-dup) remember only the rows that were accepted so far.
"""

from __future__ import annotations

from typing import Protocol

from tunegate.records import Record


class RowCheck(Protocol):
    """One property of a record, with the reason code used when it fails."""

    reason: str

    def __call__(self, record: Record) -> str | None:
        """The rejection detail, or None when the record passes."""
        ...

    def accept(self, record: Record) -> None:
        """Told when a record was accepted by every check (stateful checks index it)."""
        ...
