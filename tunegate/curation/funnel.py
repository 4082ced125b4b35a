"""The curation funnel: batches of ingested rows through the checks, one verdict per row.

    ingest (schema) -> contract (schema) -> exact_dedup -> response_dedup -> contamination
        -> near_dedup -> row checks (template, ...) -> accepted

Each dedup stage remembers the rows that pass it, so the first occurrence among the rows
reaching it is kept; but a dedup stage keeps only a copy that passes the row checks
(`Batch.viable`: template, length; asked of the first copies only, and remembered for the
row-check stage), so a group is lost only when no copy passes: a whitespace variant that
fails `template_parity` does not push out its clean copy. A kept row may still fall at a
later batch stage (its verdict says why), and its duplicates keep naming it. Rows stream
through in batches of `batch_size`: a batch's verdicts go to the caller (who writes them to
the lineage database) and its accepted records to a sink (a list in tests, a spool file in a
run), so memory holds one batch plus the dedup indexes, whatever the input size. Each stage
counts the rows it saw and rejected and the seconds it took.
"""

from __future__ import annotations

import gc
import json
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunegate.curation.checks.base import Batch, BatchCheck, RowCheck
from tunegate.curation.shingles import key64
from tunegate.data.ingest import Rejected, raw_text
from tunegate.data.records import Record
from tunegate.data.verdicts import Verdict

ACCEPTED_STAGE = "curate"


@dataclass
class StageStat:
    """Rows a stage saw and rejected, and the time it took."""

    name: str
    reason: str
    rows_in: int = 0
    rejected: int = 0
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # this thread's CPU time (steady on a busy machine)

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds else float("inf")


CURATED_COLUMNS = ("n_turns", "system_words", "prompt_words", "response_words")


@dataclass
class FunnelStats:
    """What the quality report and the batch expectations need, in bounded memory."""

    stages: dict[str, StageStat] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    # Work outside the stages: word hashing shared by the text checks, verdict building.
    overhead: dict[str, float] = field(default_factory=lambda: {"tokenize": 0.0, "verdicts": 0.0})
    words_before: array = field(default_factory=lambda: array("i"))  # every parsed row
    words_after: array = field(default_factory=lambda: array("i"))  # every accepted row
    # Base-model tokens of the message contents, when curation has the tokenizer.
    tokens_before: array = field(default_factory=lambda: array("i"))
    tokens_after: array = field(default_factory=lambda: array("i"))
    curated: dict[str, array] = field(
        default_factory=lambda: {c: array("i") for c in CURATED_COLUMNS}
    )
    curated_keys: array = field(default_factory=lambda: array("q"))
    curated_synthetic: array = field(default_factory=lambda: array("b"))

    @property
    def n_input(self) -> int:
        return sum(self.counts.values())

    def stage(self, name: str, reason: str) -> StageStat:
        return self.stages.setdefault(name, StageStat(name, reason))


def where(record: Record) -> str:
    raw = record.meta.get("raw")
    line = getattr(raw, "line", None) or record.source_row
    return f"{record.source}:{line}" + (
        "" if line == record.source_row else f" (row {record.source_row})"
    )


@dataclass
class _RowCheckRun:
    """One row through the row checks: which failed (index) and why, and each check's time."""

    failed: int | None = None
    detail: str | None = None
    times: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class BatchOutcome:
    """One batch judged: a verdict per input row (input order) and the accepted records."""

    verdicts: list[Verdict]
    accepted: list[Record]


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects alive before a long stream out of the garbage collector's full scans.

    Curation allocates a few objects per row, so full collections come often, and each one
    walks every object of the imported libraries (pandas, pandera, Great Expectations) again:
    about 6 µs a row, a quarter of ingest. Frozen objects are skipped until the stream ends.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Funnel:
    """Batch checks in order, then row checks; the first failing check decides a row.

    `count_tokens` (records -> tokens each) feeds the report's token-length histograms.
    """

    def __init__(
        self,
        checks: Sequence[BatchCheck],
        row_checks: Sequence[RowCheck] = (),
        batch_size: int = 4096,
        count_tokens: Callable[[Sequence[Record]], Sequence[int]] | None = None,
    ):
        self.checks = list(checks)
        self.row_checks = list(row_checks)
        self.batch_size = batch_size
        self.count_tokens = count_tokens
        self.stats = FunnelStats()
        self.row_check_verdicts: list[Verdict] = []  # rejections by row checks (few)
        self.stats.stage("ingest", "schema")
        for c in self.checks:
            self.stats.stage(c.stage, c.reason)
        for c in self.row_checks:
            self.stats.stage(getattr(c, "stage", c.reason), c.reason)

    def run(self, items: Iterable[Record | Rejected]) -> Iterator[BatchOutcome]:
        """Judge the rows batch by batch."""
        it = iter(items)
        ingest = self.stats.stages["ingest"]
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()
            chunk: list[Record | Rejected] = []
            for item in it:
                chunk.append(item)
                if len(chunk) == self.batch_size:
                    break
            ingest.seconds += time.perf_counter() - t0
            ingest.cpu_seconds += time.thread_time() - c0
            if not chunk:
                return
            yield self._judge(chunk)

    def _judge(self, chunk: list[Record | Rejected]) -> BatchOutcome:
        stats = self.stats
        verdicts: list[Verdict | None] = [None] * len(chunk)
        ingest = stats.stages["ingest"]
        ingest.rows_in += len(chunk)
        records: list[Record] = []
        positions: list[int] = []
        for k, item in enumerate(chunk):
            if isinstance(item, Rejected):
                verdicts[k] = Verdict(item.source, item.row, None, "ingest", "rejected",
                                      item.reason, item.detail, raw=item.raw)  # fmt: skip
                ingest.rejected += 1
            else:
                records.append(item)
                positions.append(k)
        batch = Batch(records)
        failures: dict[int, _RowCheckRun] = {}  # row checks run early for a dedup stage

        def row_checks(i: int) -> _RowCheckRun:
            if i not in failures:
                failures[i] = self._run_row_checks(records[i])
            return failures[i]

        batch.viable = lambda i: row_checks(i).failed is None
        alive = list(range(len(records)))
        c0 = time.thread_time()
        stats.words_before.extend(batch.role_words.sum(axis=1).tolist())  # hashes the words
        tokens = list(self.count_tokens(records)) if self.count_tokens and records else []
        stats.tokens_before.extend(tokens)
        stats.overhead["tokenize"] += time.thread_time() - c0
        for check in self.checks:
            stat = stats.stages[check.stage]
            t0, c0 = time.perf_counter(), time.thread_time()
            stat.rows_in += len(alive)
            findings = check.check_batch(batch, alive)
            stat.seconds += time.perf_counter() - t0
            stat.cpu_seconds += time.thread_time() - c0
            for i, found in findings.items():
                r = records[i]
                verdicts[positions[i]] = Verdict(
                    r.source, r.source_row, r.record_id, check.stage, "rejected", check.reason,
                    f"{where(r)}: {found.detail}", found.duplicate_of, found.cluster_id,
                    found.eval_item, raw_text(r),
                )  # fmt: skip
            stat.rejected += len(findings)
            alive = [i for i in alive if i not in findings]
        c0 = time.thread_time()
        accepted: list[Record] = []
        kept: list[int] = []
        for i in alive:
            r = records[i]
            verdict = self._row_checks(r, row_checks(i))
            if verdict is None:
                verdict = Verdict(r.source, r.source_row, r.record_id, ACCEPTED_STAGE, "accepted")
                accepted.append(r)
                kept.append(i)
            verdicts[positions[i]] = verdict
        self._count(verdicts, batch, kept)
        stats.tokens_after.extend(tokens[i] for i in kept if tokens)
        stats.overhead["verdicts"] += time.thread_time() - c0
        return BatchOutcome([v for v in verdicts if v is not None], accepted)

    def _run_row_checks(self, record: Record) -> _RowCheckRun:
        """Every row check in order until one fails; no stats yet (the row may never get there)."""
        run = _RowCheckRun()
        for k, check in enumerate(self.row_checks):
            t0, c0 = time.perf_counter(), time.thread_time()
            detail = check(record)
            run.times.append((time.perf_counter() - t0, time.thread_time() - c0))
            if detail is not None:
                run.failed, run.detail = k, detail
                break
        return run

    def _row_checks(self, record: Record, run: _RowCheckRun) -> Verdict | None:
        """The row-check stage for a row that reached it: stats, and its verdict if one failed."""
        for check, (seconds, cpu) in zip(self.row_checks, run.times, strict=False):
            stat = self.stats.stages[getattr(check, "stage", check.reason)]
            stat.rows_in += 1
            stat.seconds += seconds
            stat.cpu_seconds += cpu
        if run.failed is not None:
            check = self.row_checks[run.failed]
            self.stats.stages[getattr(check, "stage", check.reason)].rejected += 1
            v = Verdict(record.source, record.source_row, record.record_id,
                        getattr(check, "stage", check.reason), "rejected", check.reason,
                        f"{where(record)}: {run.detail}", raw=raw_text(record))  # fmt: skip
            self.row_check_verdicts.append(v)
            return v
        for check in self.row_checks:
            check.accept(record)
        return None

    def _count(self, verdicts: Sequence[Verdict | None], batch: Batch, kept: list[int]) -> None:
        stats = self.stats
        stats.counts.update((v.reason or v.status) for v in verdicts if v is not None)
        words = batch.role_words[kept]
        turns = np.diff(batch.message_start)[kept]
        for col, values in zip(CURATED_COLUMNS, (turns, *words.T), strict=True):
            stats.curated[col].extend(values.tolist())
        stats.words_after.extend(words.sum(axis=1).tolist())
        records = batch.records
        stats.curated_keys.extend(key64(records[i].record_id) - (1 << 63) for i in kept)
        stats.curated_synthetic.extend(records[i].origin == "synthetic" for i in kept)


# -- where accepted records go ---------------------------------------------------------------


class AcceptedRecords(Sequence[Record]):
    """The accepted records of a run, in input order, in a JSONL spool file.

    A `Sequence`: `len`, iteration and indexing work as on a list, so the snapshot writer
    reads the accepted set without holding it in memory. Up to `cache_rows` records are
    also kept as objects (a small run iterates the very same `Record`s every time, as a
    list would); past that the cache is dropped and every read streams from the file.
    """

    def __init__(self, path: Path, cache_rows: int = 100_000):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._offsets = array("q", [0])
        self._file: Any = path.open("w", encoding="utf-8")
        self._cache: list[Record] | None = []
        self._cache_rows = cache_rows

    def extend(self, records: Iterable[Record]) -> None:
        records = list(records)
        if self._cache is not None:
            self._cache.extend(records)
            if len(self._cache) > self._cache_rows:
                self._cache = None
        lines = [
            json.dumps({"record_id": r.record_id, "origin": r.origin, "source": r.source,
                        "source_row": r.source_row, "format": r.meta.get("format"),
                        "messages": r.messages}, ensure_ascii=False) + "\n"
            for r in records
        ]  # fmt: skip
        end = self._offsets[-1]
        for line in lines:
            end += len(line.encode("utf-8"))
            self._offsets.append(end)
        self._file.write("".join(lines))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @staticmethod
    def _record(line: str | bytes) -> Record:
        d = json.loads(line)
        messages = tuple((role, content) for role, content in d["messages"])
        return Record(messages, d["origin"], d["source"], d["source_row"], {"format": d["format"]})

    def __iter__(self) -> Iterator[Record]:
        if self._cache is not None:
            yield from self._cache
            return
        if self._file is not None:
            self._file.flush()
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                yield self._record(line)

    def __getitem__(self, index):  # type: ignore[no-untyped-def,override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self._cache is not None:
            return self._cache[index]
        if self._file is not None:
            self._file.flush()
        with self.path.open("rb") as f:
            f.seek(self._offsets[index])
            return self._record(f.read(self._offsets[index + 1] - self._offsets[index]))

    def __getstate__(self) -> dict[str, Any]:  # picklable (Prefect may copy task results)
        self.close()
        return {**self.__dict__, "_file": None}


class RunVerdicts(Sequence[Verdict]):
    """A recorded run's verdicts, read from the lineage database when iterated.

    Curation writes verdicts batch by batch and keeps none in memory; this gives callers
    the list-like view they expect (`len`, iteration in input order, indexing).
    """

    def __init__(self, lineage: Any, run_id: str, sources: Sequence[str], n: int):
        self.lineage, self.run_id, self.sources, self._n = lineage, run_id, list(sources), n

    def __len__(self) -> int:
        return self._n

    def counts(self) -> dict[str, int]:
        """Rows per reason (or `accepted`), as the database holds them now."""
        return dict(self.lineage.verdict_counts(self.run_id))

    def __iter__(self) -> Iterator[Verdict]:
        for source in self.sources:
            yield from self.lineage.source_verdicts(self.run_id, source)

    def __getitem__(self, index):  # type: ignore[no-untyped-def,override]
        if isinstance(index, slice):
            return list(self)[index]
        for k, v in enumerate(self):
            if k == (index if index >= 0 else index + self._n):
                return v
        raise IndexError(index)
