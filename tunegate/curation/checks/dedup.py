"""Exact duplicates over the whole conversation, and one answer reused for other prompts.

Deterministic: rows are seen in source order and, among the rows that reach a check, the
first occurrence that passes the row checks (`Batch.viable`) is kept. Each rejected row
names the row it duplicates (`source:row`) and a cluster id shared by every copy. The index
holds one 64-bit key per kept row in sorted numpy arrays (`HashIndex`), so memory grows by
~16 bytes per kept row, not per input byte.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np

from tunegate.config import PipelineConfig
from tunegate.curation.checks.base import Batch, CheckSetup, Finding
from tunegate.curation.shingles import HashIndex, key64
from tunegate.data.records import Record, conversation_key


class KeptRows:
    """`source:row` of every kept row by position, in ~10 bytes a row."""

    def __init__(self) -> None:
        self._sources: list[str] = []
        self._source_ids: dict[str, int] = {}
        self._source_of = array("I")
        self._row_of = array("q")

    def __len__(self) -> int:
        return len(self._row_of)

    def add(self, record: Record) -> int:
        sid = self._source_ids.setdefault(record.source, len(self._sources))
        if sid == len(self._sources):
            self._sources.append(record.source)
        self._source_of.append(sid)
        self._row_of.append(record.source_row)
        return len(self._row_of) - 1

    def where(self, position: int) -> str:
        return f"{self._sources[self._source_of[position]]}:{self._row_of[position]}"

    @property
    def nbytes(self) -> int:
        return len(self._source_of) * 4 + len(self._row_of) * 8


class _KeyedDuplicates:
    """Shared logic: a row whose key was seen on a kept row is a duplicate of that row."""

    reason = ""
    stage = ""
    cluster_prefix = ""

    def __init__(self) -> None:
        self.index = HashIndex()
        self.kept = KeptRows()

    def keys(self, batch: Batch, rows: Sequence[int]) -> list[int | None]:
        """64-bit key of each row's duplicate class; None: the row is not checked."""
        raise NotImplementedError

    def describe(self, where: str) -> str:
        raise NotImplementedError

    def check_batch(self, batch: Batch, rows: Sequence[int]) -> dict[int, Finding]:
        keys = self.keys(batch, rows)
        present = [k for k in keys if k is not None]
        earlier = self.index.get(np.array(present, dtype=np.uint64))
        earlier_of = dict(zip(present, earlier.tolist(), strict=True))
        new_keys: list[int] = []
        new_positions: list[int] = []
        findings: dict[int, Finding] = {}
        for i, key in zip(rows, keys, strict=True):
            if key is None:
                continue
            first = earlier_of[key]
            if first >= 0:
                where = self.kept.where(first)
                findings[i] = Finding(self.describe(where), duplicate_of=where,
                                      cluster_id=f"{self.cluster_prefix}{key:016x}")  # fmt: skip
                continue
            if not batch.viable(i):  # a copy the row checks reject: a later copy may be kept
                continue
            earlier_of[key] = position = self.kept.add(batch.records[i])  # later copies in batch
            new_keys.append(key)
            new_positions.append(position)
        self.index.add(np.array(new_keys, dtype=np.uint64), np.array(new_positions, np.int64),
                       absent=True)  # fmt: skip
        return findings

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.kept.nbytes


class ExactDuplicates(_KeyedDuplicates):
    """Rejects a conversation equal (NFKC, case, whitespace; roles included) to a kept one."""

    reason = "exact_duplicate"
    meaning = "same conversation as an earlier row after normalisation"
    stage = "exact_dedup"
    order = 20
    needs_tokenizer = False
    cluster_prefix = "e-"

    @staticmethod
    def enabled(config: PipelineConfig) -> bool:
        return config.dedup.exact

    @classmethod
    def from_config(cls, config: PipelineConfig, setup: CheckSetup) -> ExactDuplicates:
        return cls()

    def keys(self, batch: Batch, rows: Sequence[int]) -> list[int | None]:
        return [key64(conversation_key(batch.records[i].messages)) for i in rows]

    def describe(self, where: str) -> str:
        return f"same conversation as {where} (after NFKC, case and whitespace normalisation)"


class DuplicateResponses(_KeyedDuplicates):
    """Rejects an answer of at least `min_words` words that a kept row gave to another prompt.

    The answer is every assistant message, compared as its sequence of words (case and
    punctuation ignored), hashed for the whole batch at once from the shared word hashes.

    Short answers ("Yes", "The Matrix") legitimately answer many prompts, so they are not
    checked; a long answer repeated for different prompts is a broken generator or a
    copy-paste (AlpacaEval's NullModel gives one 872-character string to 805 prompts).
    """

    reason = "duplicate_response"
    meaning = (
        "same answer (>= dedup.response_min_words words) as an earlier row with a different prompt"
    )
    stage = "response_dedup"
    order = 30  # before near-dup: one long answer given to many prompts is one cluster
    needs_tokenizer = False
    cluster_prefix = "r-"

    @staticmethod
    def enabled(config: PipelineConfig) -> bool:
        return config.dedup.duplicate_response

    @classmethod
    def from_config(cls, config: PipelineConfig, setup: CheckSetup) -> DuplicateResponses:
        return cls(config.dedup.response_min_words)

    def __init__(self, min_words: int = 8):
        super().__init__()
        self.min_words = min_words

    def keys(self, batch: Batch, rows: Sequence[int]) -> list[int | None]:
        keys, words = batch.answer_keys()
        return [int(keys[i]) if words[i] >= self.min_words else None for i in rows]

    def describe(self, where: str) -> str:
        return f"same answer as {where}, given to a different prompt"
