"""The curation checks, one module each, listed once in `CHECKS`.

Curation builds its funnel from `CHECKS` (the enabled ones, in their declared `order`) and
the documented reason codes from the same list (`reason_codes`), so adding a check is one new
module here plus one line below; see README.md, "Extending".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunegate.config import PipelineConfig
from tunegate.curation.checks.base import BatchCheck, CheckKind, CheckSetup, RowCheck
from tunegate.curation.checks.contamination import Contamination
from tunegate.curation.checks.contract import RecordContract
from tunegate.curation.checks.dedup import DuplicateResponses, ExactDuplicates
from tunegate.curation.checks.near_dup import NearDuplicates
from tunegate.curation.checks.template import (
    AssistantTokensTrained,
    ControlTokens,
    SequenceLength,
    StopTokenTrained,
    SystemTurn,
    TemplateParity,
    TemplateRenders,
)
from tunegate.data.verdicts import OTHER_REASONS

CHECKS: list[type[CheckKind]] = [
    RecordContract,
    ExactDuplicates,
    DuplicateResponses,
    Contamination,
    NearDuplicates,
    ControlTokens,
    SystemTurn,
    TemplateRenders,
    SequenceLength,
    TemplateParity,
    StopTokenTrained,
    AssistantTokensTrained,
]


def reason_codes() -> dict[str, str]:
    """Every reason code a verdict may name and what it means: the checks' and the others'.

    Assembled when asked, so a check added to `CHECKS` (or by a test) is documented at once.
    Two checks may share a code only with the same meaning.
    """
    codes = dict(OTHER_REASONS)
    for kind in CHECKS:
        if codes.setdefault(kind.reason, kind.meaning) != kind.meaning:
            raise ValueError(f"{kind.__name__} gives reason {kind.reason!r} another meaning: "
                             f"{kind.meaning!r} vs {codes[kind.reason]!r}")  # fmt: skip
    return codes


def _is_batch(kind: type[CheckKind]) -> bool:
    return hasattr(kind, "check_batch")  # batch checks judge many rows per call


def _build(config: PipelineConfig, setup: CheckSetup, batch: bool) -> list[Any]:
    kinds = sorted(CHECKS, key=lambda kind: kind.order)
    return [
        kind.from_config(config, setup)
        for kind in kinds
        if _is_batch(kind) == batch
        and kind.enabled(config)
        and (setup.tokenizer is not None or not kind.needs_tokenizer)
    ]


def batch_checks(config: PipelineConfig, spool_dir: Path | None = None) -> list[BatchCheck]:
    """The enabled batch checks in funnel order, cheap to costly."""
    return _build(config, CheckSetup(spool_dir=spool_dir), batch=True)


def row_checks(config: PipelineConfig, tokenizer: Any = None) -> list[RowCheck]:
    """The enabled row checks in funnel order; those that render rows need the `tokenizer`."""
    return _build(config, CheckSetup(tokenizer=tokenizer), batch=False)
