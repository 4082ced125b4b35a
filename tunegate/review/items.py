"""A row that waits for a human, and the id it goes by while it waits.

The id is review policy (what review URLs, exports and imports name a row by), so it lives
here; the lineage only stores it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ReviewItem:
    """A synthetic row waiting for a human: where it came from, its scores and flags."""

    source: str
    source_row: int
    record_id: str
    flags: tuple[str, ...]
    scores: dict[str, float]

    def item_id(self, run_id: str) -> str:
        """Stable short id of this row in this run (what URLs and exports use)."""
        key = f"{run_id}\x1f{self.source}\x1f{self.source_row}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]
