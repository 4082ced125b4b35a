"""Batch-level expectations: a Great Expectations suite over the curated batch.

Row checks judge one conversation; some failures only show in the whole batch: too few
rows, answers that are suddenly all one word long, a set that is nearly all synthetic.
The suite lives in `schemas/curated_batch.json` (GX 1.x suite JSON) where a data team
edits bounds without Python. It runs on an ephemeral GX context (nothing written but the
Data Docs HTML, which goes to `reports/<run id>/gx/`); a failed expectation blocks the run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunegate.curation.funnel import CURATED_COLUMNS, FunnelStats


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result, in words."""

    type: str
    column: str | None
    success: bool
    observed: Any
    notes: str

    def describe(self) -> str:
        on = f"({self.column})" if self.column else ""
        return f"{self.type}{on}: observed {self.observed}" + (
            f" — {self.notes}" if self.notes else ""
        )


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    path: Path
    success: bool
    outcomes: list[ExpectationOutcome]
    docs: Path | None  # Data Docs index.html
    # This run's validation result page. The index lists results with JavaScript from CDNs,
    # so offline it is the only way to reach them: the report links the page directly.
    validation: Path | None = None

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]


def curated_frame(stats: FunnelStats) -> pd.DataFrame:
    """One row per accepted conversation: the columns the suite's expectations read."""
    frame = pd.DataFrame({c: np.frombuffer(stats.curated[c], dtype=np.int32).astype(np.int64)
                          for c in CURATED_COLUMNS})  # fmt: skip
    frame["total_words"] = frame[["system_words", "prompt_words", "response_words"]].sum(axis=1)
    frame["record_key"] = np.frombuffer(stats.curated_keys, dtype=np.int64)
    synthetic = np.frombuffer(stats.curated_synthetic, dtype=np.int8).astype(np.int64)
    frame["is_synthetic"] = synthetic
    frame["origin"] = np.where(synthetic == 1, "synthetic", "human")
    return frame


def load_suite(path: Path) -> dict[str, Any]:
    try:
        suite = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"expectation suite {path}: {exc}") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ValueError(f"expectation suite {path}: expected {{name, expectations: [...]}}")
    return suite


def validate_batch(
    frame: pd.DataFrame, suite_path: Path, docs_dir: Path | None, parameters: dict[str, Any]
) -> SuiteResult:
    """Run the suite on the frame (ephemeral context); write Data Docs under docs_dir."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    spec = load_suite(suite_path)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    expectations = [
        ExpectationConfiguration(type=e["type"], kwargs=e.get("kwargs", {}), meta=e.get("meta"))
        .to_domain_obj()
        for e in spec["expectations"]
    ]  # fmt: skip
    suite = context.suites.add(gx.ExpectationSuite(name=spec.get("name", suite_path.stem),
                                                   expectations=expectations,
                                                   meta=spec.get("meta")))  # fmt: skip
    asset = context.data_sources.add_pandas("curation").add_dataframe_asset("curated_batch")
    batch = asset.add_batch_definition_whole_dataframe("all")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="curated_batch", data=batch, suite=suite)
    )
    actions = []
    if docs_dir is not None:
        for site in context.get_docs_sites_urls():
            context.delete_data_docs_site(site["site_name"])
        context.add_data_docs_site(site_name="run", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })  # fmt: skip
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["run"]))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="curated_batch", validation_definitions=[definition], actions=actions,
        result_format="SUMMARY"))  # fmt: skip
    run = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters)
    outcomes = []
    for result in next(iter(run.run_results.values())).results:
        cfg = result.expectation_config
        observed = result.result.get("observed_value")
        if observed is None and "unexpected_count" in result.result:
            observed = (f"{result.result['unexpected_count']} unexpected "
                        f"({result.result.get('unexpected_percent') or 0:.2f}%)")  # fmt: skip
        if result.exception_info and result.exception_info.get("raised_exception"):
            observed = result.exception_info.get("exception_message")
        notes = (cfg.meta or {}).get("notes", "")
        outcomes.append(ExpectationOutcome(cfg.type, cfg.kwargs.get("column"),
                                           bool(result.success), observed, notes))  # fmt: skip
    docs = validation = None
    if docs_dir is not None:  # one run per folder: its one validation page
        docs = docs_dir / "index.html"
        validation = next(iter(sorted((docs_dir / "validations").rglob("*.html"))), None)
    return SuiteResult(suite.name, suite_path, bool(run.success), outcomes, docs, validation)
