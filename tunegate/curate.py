"""Curation: every input row ends as accepted or rejected with a reason code.

ingest → record contract → exact dedup. Conservation is checked before anything is
returned: input rows = accepted + rejected, or the run fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from tqdm import tqdm

from tunegate.config import PipelineConfig
from tunegate.ingest import Rejected, file_sha256, ingest_file, source_files
from tunegate.lineage import Lineage, Verdict
from tunegate.quality.checks import RowCheck
from tunegate.quality.contract import RecordContract
from tunegate.quality.dedup import ExactDuplicates
from tunegate.records import Record

STAGE = "curate"


class CurationError(RuntimeError):
    """Curation cannot produce a usable training set."""


@dataclass
class CurationResult:
    accepted: list[Record]
    verdicts: list[Verdict]
    files: list[dict[str, object]] = field(default_factory=list)

    @property
    def n_input(self) -> int:
        return len(self.verdicts)

    @property
    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for v in self.verdicts:
            key = v.reason or v.status
            counts[key] = counts.get(key, 0) + 1
        return counts


def _reject(source: str, row: int, reason: str, detail: str, record_id: str | None = None) -> Verdict:
    return Verdict(source, row, record_id, STAGE, "rejected", reason, detail)


def build_checks(config: PipelineConfig) -> list[RowCheck]:
    """The row checks of a config, cheap to costly."""
    checks: list[RowCheck] = [RecordContract()]
    if config.dedup.exact:
        checks.append(ExactDuplicates())
    return checks


def curate_records(config: PipelineConfig, checks: list[RowCheck] | None = None) -> CurationResult:
    """Run every source through the checks; pure (no lineage writes) so it is easy to test."""
    checks = build_checks(config) if checks is None else checks
    result = CurationResult(accepted=[], verdicts=[])
    for src in config.data.sources:
        for path in source_files(config.resolve(src.path)):
            n_rows = 0
            for item in tqdm(ingest_file(path, src.format, src.origin), desc=path.name, unit=" rows",
                             leave=False):  # fmt: skip
                n_rows += 1
                result.verdicts.append(_judge(item, checks, result))
            result.files.append(
                {"path": str(path), "sha256": file_sha256(path), "format": src.format,
                 "origin": src.origin, "rows": n_rows}  # fmt: skip
            )
    return result


def _judge(item: Record | Rejected, checks: list[RowCheck], result: CurationResult) -> Verdict:
    """The first failing check decides; a row passing all of them is accepted."""
    if isinstance(item, Rejected):
        return _reject(item.source, item.row, "schema", item.detail)
    for check in checks:
        detail = check(item)
        if detail is not None:
            where = f"{item.source}:{item.source_row}: {detail}"
            return _reject(item.source, item.source_row, check.reason, where, item.record_id)
    for check in checks:
        check.accept(item)
    result.accepted.append(item)
    return Verdict(item.source, item.source_row, item.record_id, STAGE, "accepted")


def curate(config: PipelineConfig, lineage: Lineage, run_id: str) -> CurationResult:
    """Curate and record sources, records and one verdict per input row."""
    result = curate_records(config)
    accepted = sum(v.status == "accepted" for v in result.verdicts)
    rejected = sum(v.status == "rejected" for v in result.verdicts)
    total = sum(int(f["rows"]) for f in result.files)  # type: ignore[call-overload]
    if accepted + rejected != total:
        raise CurationError(f"conservation broken: {total} rows in, {accepted} + {rejected} out")
    for f in result.files:
        lineage.record_source(run_id, str(f["path"]), str(f["sha256"]), str(f["format"]),
                              str(f["origin"]), int(f["rows"]))  # type: ignore[call-overload]  # fmt: skip
    lineage.record_records((r.record_id, r.messages_json(), r.origin) for r in result.accepted)
    lineage.record_verdicts(run_id, result.verdicts)
    if accepted < config.data.min_accepted_rows:
        raise CurationError(
            f"only {accepted} of {total} rows accepted (data.min_accepted_rows = "
            f"{config.data.min_accepted_rows}); see `tunegate verdicts --run {run_id}`"
        )
    return result
