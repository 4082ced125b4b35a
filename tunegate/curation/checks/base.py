"""The row-check protocol every curation check follows.

A check tests one property of one record and, when the record fails, returns the
detail that goes into `row_verdicts` under the check's reason code. Checks run in
order and the first failure decides a row's verdict, so order them cheap to costly.
Stateful checks (dedup, near-dup) remember only the rows that were accepted so far.

Curation's own checks (contract, dedup, contamination) are `BatchCheck`s: they see a
batch of a few thousand rows at once, so pandera and numpy do the work instead of a
Python loop per row. Row checks run after them, one row at a time.

Every check class declares itself (`CheckKind`): its reason code and what the code means, its
place in the funnel (`order`), the config switch that enables it and how to build it from the
config. `tunegate.curation.checks.CHECKS` lists each class once; curation builds its funnel
and the documented reason codes from that list, so a new check is one module plus one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from tunegate.curation.shingles import WordBatch, hash_words, mix64
from tunegate.data.records import Record

if TYPE_CHECKING:
    from tunegate.config import PipelineConfig


class RowCheck(Protocol):
    """One property of a record, with the reason code used when it fails."""

    reason: str

    def __call__(self, record: Record) -> str | None:
        """The rejection detail, or None when the record passes."""
        ...

    def accept(self, record: Record) -> None:
        """Told when a record was accepted by every check (stateful checks index it)."""
        ...


@dataclass(frozen=True)
class Finding:
    """Why a check rejects a row, and what the row matches (a kept row or an eval item)."""

    detail: str
    duplicate_of: str | None = None  # `source:row` of the kept row it duplicates
    cluster_id: str | None = None  # shared by every row of one duplicate cluster
    eval_item: str | None = None  # `file#id` of the eval item it overlaps


class Batch:
    """The records of one batch, with word hashes of their messages computed once.

    Checks that compare text (near-duplicates, contamination) share `words`: message m of
    record r is text `message_start[r] + m` of it.
    """

    def __init__(self, records: Sequence[Record]):
        self.records = records
        # Would row i pass every row check (template, length)? The funnel sets this; a dedup
        # stage keeps only a viable copy, so a group is lost only when no copy passes.
        self.viable: Callable[[int], bool] = lambda i: True
        counts = np.fromiter((len(r.messages) for r in records), np.int64, len(records))
        self.message_start = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self.message_record = np.repeat(np.arange(len(records), dtype=np.int64), counts)

    @cached_property
    def words(self) -> WordBatch:
        return hash_words([content for r in self.records for _, content in r.messages])

    @cached_property
    def message_roles(self) -> np.ndarray:
        """Role of each message: 0 system, 1 user, 2 assistant, 3 anything else."""
        codes = {"system": 0, "user": 1, "assistant": 2}
        return np.fromiter((codes.get(role, 3) for r in self.records for role, _ in r.messages),
                           np.int64, len(self.message_record))  # fmt: skip

    @cached_property
    def role_words(self) -> np.ndarray:
        """Words per record and role, shape (records, 3): system, user, assistant."""
        per_message = np.diff(self.words.text_start)
        slot = self.message_record * 4 + self.message_roles
        counts = np.bincount(slot, weights=per_message, minlength=4 * len(self.records))
        return counts.reshape(len(self.records), 4)[:, :3].astype(np.int64)

    def answer_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Per record, a 64-bit hash of its assistant messages' word sequence, and its words."""
        wb = self.words
        pos = np.arange(len(wb.word_hash)) - wb.text_start[wb.text_of]  # place in its text
        per_word = mix64(wb.word_hash ^ (pos.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
        per_text = np.zeros(wb.n_texts, dtype=np.uint64)
        nonempty = np.flatnonzero(np.diff(wb.text_start) > 0)
        if len(nonempty):
            per_text[nonempty] = np.add.reduceat(per_word, wb.text_start[nonempty])
        answer = (self.message_roles == 2).astype(np.int64)
        before = np.cumsum(answer) - answer  # assistant messages before each message
        ordinal = before - before[self.message_start[self.message_record]]  # within its record
        mixed = mix64(per_text ^ ordinal.astype(np.uint64)) * answer.astype(np.uint64)
        keys = np.zeros(len(self.records), dtype=np.uint64)
        np.add.at(keys, self.message_record, mixed)
        return mix64(keys), self.role_words[:, 2]


class BatchCheck(Protocol):
    """One property checked over a batch of records at once (vectorised, or indexed).

    `check_batch` gets the batch and the rows still alive (ascending indices into
    `batch.records`) and returns a finding for each row it rejects. A stateful check
    (dedup) remembers the rows that pass it, so among rows that reach it the first
    occurrence is kept.
    """

    reason: str
    stage: str

    def check_batch(self, batch: Batch, rows: Sequence[int]) -> dict[int, Finding]: ...


@dataclass
class CheckSetup:
    """What a run gives its checks besides the config: a spool directory, the base tokenizer.

    `shared` holds objects several checks of one run use together (the template checks'
    probe: one rendering per row whatever the number of template checks).
    """

    spool_dir: Path | None = None
    tokenizer: Any = None
    shared: dict[str, Any] = field(default_factory=dict)

    def share(self, key: str, build: Callable[[], Any]) -> Any:
        """The object under `key`, built by `build` the first time it is asked for."""
        if key not in self.shared:
            self.shared[key] = build()
        return self.shared[key]


class CheckKind(Protocol):
    """A check class as `CHECKS` lists it: everything curation needs to know to run it.

    `order` places it in the funnel, cheap to costly (batch checks always run before row
    checks, whatever their order); `reason` and `meaning` go to the documented reason codes
    (`tunegate.curation.checks.reason_codes()`), `stage` names its row in the funnel report.
    A check that renders rows with the base model (`needs_tokenizer`) is left out of a run
    without one.
    """

    reason: ClassVar[str]
    meaning: ClassVar[str]
    stage: ClassVar[str]
    order: ClassVar[int]
    needs_tokenizer: ClassVar[bool]

    @staticmethod
    def enabled(config: PipelineConfig) -> bool:
        """The config switch that turns the check on."""
        ...

    @classmethod
    def from_config(cls, config: PipelineConfig, setup: CheckSetup) -> BatchCheck | RowCheck:
        """The check with its settings from the config."""
        ...
