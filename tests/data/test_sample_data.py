"""The shipped sample: curation rejects every planted defect for its reason, and nothing else.

`datasets/raw/README.md` lists each planted defect (file, line, kind); this test reads that
list, so a regenerated sample is checked against its own documentation. The run is what
`tunegate curate pipeline.yaml` does: the funnel with the base model's tokenizer (template
gate), then the automatic review of synthetic rows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

from tunegate.chat import load_tokenizer
from tunegate.config import load_config, parse_config
from tunegate.curation.run import curate
from tunegate.lineage import Lineage
from tunegate.review.triage import review_synthetic

pytestmark = pytest.mark.integration

RAW = REPO / "datasets" / "raw"

# The README's defect kinds and the reason code curation must give each.
EXPECTED_REASON = {
    "exact_duplicate": "exact_duplicate",
    "near_duplicate": "near_duplicate",
    "empty_output": "schema",
    "missing_output": "schema",
    "invalid_json": "schema",
    "empty_instruction": "schema",
    "missing_assistant": "schema",
    "refusal": "synthetic_rejected",
    "repetition_loop": "synthetic_rejected",
    "control_token": "template",
}


def planted_defects() -> dict[tuple[str, int], tuple[str, str]]:
    """(file, line) -> (kind, detail) from the README's per-file line tables."""
    defects: dict[tuple[str, int], tuple[str, str]] = {}
    current = None
    for line in (RAW / "README.md").read_text().splitlines():
        heading = re.match(r"### `([^`]+)`", line)
        if heading:
            current = heading.group(1)
        row = re.match(r"\| (\d+) \| `(\w+)` \| (.*) \|$", line)
        if row and current:
            defects[(current, int(row.group(1)))] = (row.group(2), row.group(3))
    return defects


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, embedded_model_dir):
    tmp = tmp_path_factory.mktemp("sample")
    data = load_config(REPO / "pipeline.yaml").model_dump()
    for source in data["data"]["sources"]:
        source["path"] = str(REPO / source["path"])
    data["eval"]["heldout_path"] = str(REPO / data["eval"]["heldout_path"])
    data["contamination"]["eval_files"] = [
        str(REPO / p) for p in data["contamination"]["eval_files"]
    ]
    data["workspace"] = str(tmp / "ws")
    config = parse_config(data, root=tmp)  # reports/ under tmp, not in the checkout
    lineage = Lineage(tmp / "lineage.duckdb")
    run = lineage.start_run("curate", config.config_hash(), "{}")
    result = curate(config, lineage, run, tokenizer=load_tokenizer(embedded_model_dir))
    review_synthetic(config, lineage, run, result)
    verdicts = {(Path(r["source"]).name, r["source_row"]): r for r in lineage.query(
        "SELECT * FROM row_verdicts WHERE run_id = ?", [run])}  # fmt: skip
    return result, lineage, run, verdicts


@pytest.mark.unit
def test_the_readme_lists_the_defects_of_both_files():
    defects = planted_defects()
    kinds = {kind for kind, _ in defects.values()}
    assert kinds == set(EXPECTED_REASON)
    assert sum(f == "tickets_human.jsonl" for f, _ in defects) == 11
    assert sum(f == "tickets_synthetic.jsonl" for f, _ in defects) == 11


def test_every_planted_defect_is_rejected_for_its_reason(sample_run):
    *_, verdicts = sample_run
    wrong = {}
    for key, (kind, _) in planted_defects().items():
        got = verdicts[key]["reason"] if verdicts[key]["status"] == "rejected" else "accepted"
        if got != EXPECTED_REASON[kind]:
            wrong[key] = (kind, got, verdicts[key]["detail"])
    assert not wrong


def test_copies_name_the_line_they_copy(sample_run):
    *_, verdicts = sample_run
    for (name, line), (kind, detail) in planted_defects().items():
        if kind in ("exact_duplicate", "near_duplicate"):
            original = re.search(r"of line (\d+)", detail)
            assert original, detail
            assert verdicts[(name, line)]["duplicate_of"].endswith(f"{name}:{original.group(1)}")


def test_no_clean_row_is_rejected_and_rows_are_conserved(sample_run):
    result, lineage, run, verdicts = sample_run
    defects = planted_defects()
    rejected_clean = [
        k for k, v in verdicts.items() if v["status"] == "rejected" and k not in defects
    ]
    assert not rejected_clean
    files = ("tickets_human.jsonl", "tickets_synthetic.jsonl")
    lines = {f: len((RAW / f).read_text().splitlines()) for f in files}
    assert len(verdicts) == sum(lines.values()) == result.n_input
    counts = lineage.verdict_counts(run)
    assert counts["accepted"] == sum(lines.values()) - len(defects) == 400
    assert sum(counts.values()) == result.n_input
