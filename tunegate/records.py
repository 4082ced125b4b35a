"""Canonical records: every input format becomes a list of role/content messages.

A record's id is the sha256 of its canonical messages, so the same conversation has
the same id wherever it comes from, and a snapshot hash names its exact contents.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")

Message = dict[str, str]


@dataclass(frozen=True)
class Record:
    """One canonical conversation plus where it came from."""

    messages: tuple[tuple[str, str], ...]
    origin: str
    source: str
    source_row: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def record_id(self) -> str:
        return record_id(self.messages)

    def as_messages(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def messages_json(self) -> str:
        return json.dumps(self.as_messages(), ensure_ascii=False)


def record_id(messages: tuple[tuple[str, str], ...]) -> str:
    canonical = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, whitespace-collapsed: what 'the same text' means for dedup."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def conversation_key(messages: tuple[tuple[str, str], ...]) -> str:
    """Hash of the normalised whole conversation (roles included)."""
    text = "\x1e".join(f"{r}\x1f{normalize_text(c)}" for r, c in messages)
    return hashlib.sha256(text.encode()).hexdigest()
