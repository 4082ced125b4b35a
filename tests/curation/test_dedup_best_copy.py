"""A duplicate group keeps its best copy: the first that passes every row check.

Whitespace variants of a row are exact duplicates after normalisation, but the chat template
tokenizes an answer that opens with spaces differently alone than in context
(`template_parity`). Planted ahead of their clean copy, they must not push it out.
"""

from __future__ import annotations

import pytest
from conftest import assert_conserved, make_config, write_jsonl

from tunegate.chat import load_tokenizer
from tunegate.curation.run import curate
from tunegate.lineage import Lineage

pytestmark = pytest.mark.integration


def row(question: str, answer: str) -> dict[str, str]:
    return {"instruction": question, "output": answer}


def test_whitespace_variants_ahead_of_the_clean_copy_keep_the_clean_copy(
    tmp_path, embedded_model_dir
):
    groups = [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a, b in
              [(2, 3), (4, 5), (6, 7)]]  # fmt: skip
    rows = []
    for q, a in groups:  # two broken variants first, then the clean copy, then one more copy
        rows += [row(q, "  " + a), row(q, "   " + a + " "), row(q, a), row(q, a)]
    rows.append(row("Name a colour.", "  Blue."))  # a group with no passing copy: lost, once
    rows.append(row("Name a colour.", "   Blue."))
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = make_config(tmp_path, [{"path": "d.jsonl"}], contracts={"batch_suite": None},
                      template={"max_rejected_share": 1.0})  # fmt: skip
    lineage = Lineage(cfg.workspace_dir / "lineage.duckdb")
    run = lineage.start_run("test", cfg.config_hash(), "{}")
    result = curate(cfg, lineage, run, tokenizer=load_tokenizer(embedded_model_dir))
    counts = assert_conserved(lineage, run, len(rows))
    verdicts = {v["source_row"]: v for v in lineage.query(
        "SELECT source_row, status, reason, duplicate_of FROM row_verdicts WHERE run_id = ?",
        [run])}  # fmt: skip
    for g in range(3):
        first = 4 * g + 1
        broken = (verdicts[first], verdicts[first + 1])
        clean, copy = verdicts[first + 2], verdicts[first + 3]
        assert clean["status"] == "accepted", clean
        assert all(b["status"] == "rejected" and b["reason"] != "exact_duplicate" for b in broken)
        assert copy["reason"] == "exact_duplicate" and copy["duplicate_of"] == f"{path}:{first + 2}"
    assert [r.messages[-1][1] for r in result.accepted] == [a for _, a in groups]
    assert counts["accepted"] == 3 and counts["exact_duplicate"] == 3
