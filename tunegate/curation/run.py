"""Curation: every input row ends as accepted or rejected with a reason code.

ingest → record contract (pandera, `schemas/`) → exact dedup → duplicate answers →
contamination → near dedup → row checks (chat template, ...) → batch expectations (Great
Expectations, `schemas/`) → quality report. Rows stream through in batches
(`tunegate.curation.funnel`): verdicts go to the lineage database batch by batch and
accepted records to a spool file the snapshot reads, so memory stays bounded whatever the
input size. Conservation is checked before anything is returned: input rows = accepted +
rejected, or the run fails loudly (`check_counts`, which the review's close ends with too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegate.chat import ChatError
from tunegate.config import PipelineConfig
from tunegate.curation.checks import batch_checks, row_checks
from tunegate.curation.checks.base import BatchCheck, RowCheck
from tunegate.curation.checks.contamination import Contamination
from tunegate.curation.checks.contract import shipped_path
from tunegate.curation.checks.near_dup import NearDuplicates
from tunegate.curation.checks.template import (
    TemplateGateError,
    content_tokens,
    template_gate,
    template_probe,
)
from tunegate.curation.expectations import SuiteResult, curated_frame, validate_batch
from tunegate.curation.funnel import (
    AcceptedRecords,
    Funnel,
    FunnelStats,
    RunVerdicts,
    frozen_heap,
)
from tunegate.curation.report import write_quality_report
from tunegate.data.ingest import Rejected, SourceError, ingest_file, source_files
from tunegate.data.records import Record
from tunegate.data.verdicts import Verdict
from tunegate.faults import fault_point
from tunegate.hashing import sha256_source
from tunegate.lineage import Lineage

log = logging.getLogger(__name__)


class CurationError(RuntimeError):
    """Curation cannot produce a usable training set."""


@dataclass
class CurationResult:
    """Accepted records (a list, or a spool file in a recorded run) and the funnel's numbers.

    `verdicts` holds every verdict only for `curate_records` (tests, small inputs); a
    recorded run streams them to the lineage database instead (`tunegate verdicts`).
    """

    accepted: Sequence[Record]
    verdicts: Sequence[Verdict]
    files: list[dict[str, object]] = field(default_factory=list)
    # The template gate's numbers: rows checked, rejected, share.
    template: dict[str, float] = field(default_factory=dict)
    stats: FunnelStats = field(default_factory=FunnelStats)
    suite: SuiteResult | None = None  # batch expectations (Great Expectations)
    report: Path | None = None  # reports/<run id>/quality.html

    @property
    def n_input(self) -> int:
        return len(self.verdicts)

    @property
    def reasons(self) -> dict[str, int]:
        """Rows per reason code, plus `accepted` (as recorded now, reviews included)."""
        if isinstance(self.verdicts, RunVerdicts):
            return self.verdicts.counts()
        counts: dict[str, int] = {}
        for v in self.verdicts:
            key = v.reason or v.status
            counts[key] = counts.get(key, 0) + 1
        return counts


def _close(stages: Sequence[object]) -> None:
    for stage in stages:
        close = getattr(stage, "close", None)
        if close is not None:
            close()


def _rows(config: PipelineConfig, files: list[dict[str, object]]) -> Iterator[Record | Rejected]:
    """Every row of every source file in order; a file's entry is added once it is read."""
    limit = config.data.max_row_bytes
    for src in config.data.sources:
        try:
            paths = source_files(config.resolve(src.path))
        except OSError as exc:
            raise CurationError(f"source {src.path}: {exc}") from None
        for path in paths:
            n_rows = 0
            try:
                for item in ingest_file(path, src.format, src.origin, src.fields, limit,
                                        src.encoding):  # fmt: skip
                    n_rows += 1
                    yield item
                sha = sha256_source(path)
            except (SourceError, OSError) as exc:  # one clear error for the source, no traceback
                raise CurationError(f"source {src.path}: {exc}") from None
            entry = {"path": str(path), "sha256": sha, "format": src.format, "origin": src.origin}
            files.append({**entry, "rows": n_rows})


class RunWriter:
    """A run's verdicts and accepted records, to the lineage DB in transactions of `every` rows.

    Few large transactions (each costs a connection and a commit), written by one background
    thread while the funnel judges the next rows: DuckDB releases the GIL, so on two cores
    the writes mostly overlap the checks. At most one write is in flight (memory stays
    bounded) and a failed write raises at the next `flush` or at `close`. Accepted records
    also go to the run's spool file.
    """

    def __init__(self, lineage: Lineage, run_id: str, spool: AcceptedRecords, every: int = 16384):
        self.lineage, self.run_id, self.spool, self.every = lineage, run_id, spool, every
        self.pending: list[Verdict] = []
        self.parsed: dict[str, tuple[str, str, str]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lineage-writer")
        self._inflight: Future[None] | None = None

    def add(self, verdicts: Sequence[Verdict], accepted: Sequence[Record]) -> None:
        self.pending.extend(verdicts)
        for r in accepted:  # rejected rows keep their raw text in row_verdicts
            self.parsed.setdefault(r.record_id, (r.record_id, r.messages_json(), r.origin))
        self.spool.extend(accepted)
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Hand the pending rows to the writer thread (after the previous write is done)."""
        verdicts, records = self.pending, list(self.parsed.values())
        self.pending, self.parsed = [], {}
        self._wait()
        self._inflight = self._pool.submit(self._write, verdicts, records)

    def close(self) -> None:
        """Write what is pending and wait until everything is in the database."""
        self.flush()
        self._wait()

    def shutdown(self) -> None:
        """Stop the writer thread (after its write in flight, if any); idempotent."""
        self._pool.shutdown(wait=True)

    def _wait(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()

    def _write(self, verdicts: list[Verdict], records: list[tuple[str, str, str]]) -> None:
        self.lineage.record_verdicts(self.run_id, verdicts)
        self.lineage.record_records(records)


def curate_records(
    config: PipelineConfig,
    checks: list[RowCheck] | None = None,
    stages: list[BatchCheck] | None = None,
) -> CurationResult:
    """Run every source through the funnel in memory; pure (no lineage writes), for tests."""
    stages = batch_checks(config) if stages is None else stages
    funnel = Funnel(stages, row_checks(config) if checks is None else checks)
    accepted: list[Record] = []
    verdicts: list[Verdict] = []
    result = CurationResult(accepted=accepted, verdicts=verdicts, stats=funnel.stats)
    try:
        for batch in funnel.run(_rows(config, result.files)):
            verdicts.extend(batch.verdicts)
            accepted.extend(batch.accepted)
    finally:
        _close(stages)
    return result


def curate(
    config: PipelineConfig,
    lineage: Lineage,
    run_id: str,
    *,
    tokenizer: Any = None,
    checks: list[RowCheck] | None = None,
) -> CurationResult:
    """Curate and record sources, records and one verdict per input row; write the report.

    With the base model's `tokenizer`, rows also pass the chat-template gate; `checks`
    replaces the row checks that follow the batch stages. Verdicts are written batch by
    batch and accepted records spooled to `<workspace>/curation/<run id>/accepted.jsonl`.
    """
    try:  # a model whose chat format cannot train (no end of turn) fails here, once
        checks = row_checks(config, tokenizer) if checks is None else checks
    except ChatError as exc:
        raise CurationError(str(exc)) from None
    work = config.workspace_dir / "curation" / run_id
    work.mkdir(parents=True, exist_ok=True)
    stages = batch_checks(config, work)
    funnel = Funnel(stages, checks, count_tokens=content_tokens(tokenizer) if tokenizer else None)
    accepted_records = AcceptedRecords(work / "accepted.jsonl")
    result = CurationResult(accepted=accepted_records, verdicts=[], stats=funnel.stats)
    writer = RunWriter(lineage, run_id, accepted_records)
    try:
        with frozen_heap():
            for batch in funnel.run(_rows(config, result.files)):
                writer.add(batch.verdicts, batch.accepted)
        writer.close()  # everything in the database (or the write's error raised)
        fault_point("verdicts_written")
    except TemplateGateError as exc:  # the template fails on the data's shape: one error
        raise CurationError(str(exc)) from None
    finally:
        writer.shutdown()
        accepted_records.close()
        _close(stages)
    stats = funnel.stats
    total = sum(int(f["rows"]) for f in result.files)  # type: ignore[call-overload]
    for f in result.files:
        lineage.record_source(run_id, str(f["path"]), str(f["sha256"]), str(f["format"]),
                              str(f["origin"]), int(f["rows"]))  # type: ignore[call-overload]  # fmt: skip
    result.verdicts = RunVerdicts(lineage, run_id, [str(f["path"]) for f in result.files], total)
    log.info("curated %d rows: %s", total, dict(stats.counts))
    for finding in model_findings(checks):
        log.warning("%s", finding["message"])
    reports = config.resolve("reports") / run_id
    if config.contracts.batch_suite is not None:
        result.suite = validate_batch(
            curated_frame(stats), shipped_path(config, config.contracts.batch_suite),
            reports / "gx", {"min_accepted_rows": config.data.min_accepted_rows},
        )  # fmt: skip
    notes = _report_notes(config, stages, checks)
    result.report = write_quality_report(reports / "quality.html", run_id, lineage, stats,
                                         result.suite, notes)  # fmt: skip
    try:
        result.template = template_gate(checks, funnel.row_check_verdicts, config.template)
    except TemplateGateError as exc:
        raise CurationError(f"{exc}; see `tunegate verdicts --run {run_id}`") from None
    if result.suite is not None and not result.suite.success:
        failed = "\n".join(f"  - {o.describe()}" for o in result.suite.failures)
        raise CurationError(
            f"batch expectations failed ({result.suite.path}):\n{failed}\n"
            f"see {result.suite.validation or result.suite.docs or result.report}"
        )
    check_counts(config, lineage, run_id, total, len(accepted_records),
                 see=f"`tunegate verdicts --run {run_id}` and {result.report}")  # fmt: skip
    return result


def check_counts(
    config: PipelineConfig,
    lineage: Lineage,
    run_id: str,
    n_input: int,
    n_kept: int,
    *,
    after: str = "",
    see: str = "",
) -> None:
    """Conservation and the minimum, as the lineage holds the run now: one verdict per input
    row, the rows kept for training are exactly the `accepted` ones, and there are at least
    `data.min_accepted_rows` of them. Curation (`tunegate curate`, the flow's `curate_data`)
    and the review's close end here, so a broken count never reaches training."""
    counts = lineage.verdict_counts(run_id)
    recorded, accepted = sum(counts.values()), counts.get("accepted", 0)
    if recorded != n_input or accepted != n_kept:
        raise CurationError(
            f"conservation broken{after} in run {run_id}: {n_input} rows in, "
            f"{recorded} verdicts recorded, {accepted} accepted, {n_kept} kept"
        )
    if accepted < config.data.min_accepted_rows:
        hint = f"; see {see}" if see else ""
        raise CurationError(
            f"only {accepted} of {n_input} rows accepted{after} "
            f"(data.min_accepted_rows = {config.data.min_accepted_rows}){hint}"
        )


def model_findings(checks: Sequence[object]) -> list[dict[str, str]]:
    """Facts about the base model's chat format found by the template gate, once per run."""
    probe = template_probe(checks)
    return list(probe.findings) if probe is not None else []


def _report_notes(
    config: PipelineConfig, stages: Sequence[object], checks: Sequence[object] = ()
) -> dict[str, str]:
    """Settings a reader needs to interpret the report (what was compared, how)."""
    notes = {"record contract": str(shipped_path(config, config.contracts.record_schema))}
    probe = template_probe(checks)
    if probe is not None:
        notes["end of turn"] = f"{probe.end.text!r} (ids {list(probe.end.ids)}, {probe.end.source})"
        for finding in probe.findings:
            notes[f"model: {finding['code']}"] = finding["message"]
    for stage in stages:
        if isinstance(stage, NearDuplicates):
            p = stage.params
            notes["near-duplicates"] = (
                f"word {stage.shingle_size}-shingles, Jaccard >= {stage.threshold}, MinHash "
                f"{stage.hasher.num_perm} permutations, LSH {p.bands} bands x {p.rows} rows, "
                f"{stage.n_candidates} candidate pairs checked exactly"
            )
        if isinstance(stage, Contamination):
            idx = stage.index
            missing = f"; not found: {', '.join(idx.missing)}" if idx.missing else ""
            notes["eval sets"] = (
                f"{len(idx)} items from {', '.join(idx.files) or 'no file'}{missing} "
                f"({idx.ngram}-grams, near copies at {idx.near_threshold:.0%} of "
                f"{idx.shingle_size}-shingles)"
            )
    return notes
