"""The shipped general-capability suite: files, attribution, and byte-for-byte regeneration."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA

from tunegate.config import GeneralEvalConfig
from tunegate.evaluation.evaluate import GENERAL_DATA_DIR, TASKS_DIR

pytestmark = pytest.mark.unit

TASKS = ("piqa", "arc_easy", "hellaswag")
CHOICES = {"piqa": 2, "arc_easy": 4, "hellaswag": 4}


@pytest.mark.parametrize("task", TASKS)
def test_each_task_ships_500_well_formed_items(task):
    rows = [json.loads(line) for line in (GENERAL_DATA_DIR / f"{task}.jsonl").open()]
    assert len(rows) == 500 and len({r["id"] for r in rows}) == 500
    for row in rows:
        assert row["id"].startswith(f"{task}-") and row["query"].strip()
        assert len(row["choices"]) == CHOICES[task] and 0 <= row["gold"] < CHOICES[task]
    golds = [r["gold"] for r in rows]  # a random sample: no choice position dominates
    assert max(golds.count(k) for k in set(golds)) < 0.6 * len(rows)
    spec = (TASKS_DIR / "general" / f"{task}.yaml").read_text()
    assert f"task: tunegate_{task}\n" in spec and f"evals/data/general/{task}.jsonl" in spec


def test_the_default_suite_is_the_shipped_one():
    assert tuple(GeneralEvalConfig().tasks) == TASKS


def test_attribution_names_every_source_and_licence():
    readme = (REPO / "evals" / "data" / "README.md").read_text()
    for needed in ("mosaicml/llm-foundry", "klosax/hellaswag_text_data", "Academic Free License",
                   "CC BY-SA 4.0", "MIT", "Apache-2.0"):  # fmt: skip
        assert needed in readme
    licences = sorted(p.name for p in (GENERAL_DATA_DIR / "licenses").iterdir())
    assert licences == ["klosax__hellaswag_text_data.LICENSE", "mosaicml__llm-foundry.LICENSE"]


@pytest.mark.integration
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not here")
def test_files_regenerate_byte_for_byte_from_the_shared_data():
    script = REPO / "scripts" / "make_general_evals.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
