"""Real messy instruction data from public repositories: the known defects are caught.

Files come from ../shared/data (see its SOURCES.md); the test skips where they are absent.
Known defects and how they show up:
- self-instruct davinci-t0-ft predictions (rows keep the answer under `response`, mapped with
  `fields: {output: response}`): 48 empty responses -> `schema` (empty content). Its "51
  duplicate responses" are 47 extra copies of the empty response (the same 48 rows) plus 4
  short answers repeated for different questions ("Yes", "No", "True", "The Matrix"): a
  short answer to a different prompt is legitimate, so those 4 stay accepted
  (`dedup.response_min_words` = 8); no conversation is duplicated.
- AlpacaEval NullModel: one 872-character garbage answer given to all 805 prompts -> the
  first row is kept, the other 804 are `duplicate_response` of it, one cluster. (Whether
  garbage is fit to train on is the synthetic review's call, not dedup's.)
- LLaMA-Factory alpaca_en_demo: 14 duplicate (instruction, input) pairs, all exact copies
  -> 14 `exact_duplicate`.
"""

import json

import pytest
from conftest import SHARED_DATA, assert_conserved, make_config

from tunegate.curation.run import curate
from tunegate.lineage import Lineage

pytestmark = pytest.mark.integration

SELF_INSTRUCT = (
    SHARED_DATA / "yizhongw__self-instruct/human_eval/predictions/davinci-t0-ft_predictions.jsonl"
)
NULL_MODEL = SHARED_DATA / "tatsu-lab__alpaca_eval/results/NullModel/model_outputs.json"
ALPACA_DEMO = SHARED_DATA / "hiyouga__LLaMA-Factory/data/alpaca_en_demo.json"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    files = (SELF_INSTRUCT, NULL_MODEL, ALPACA_DEMO)
    if not all(f.is_file() for f in files):
        pytest.skip(f"real data not found under {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("real")
    cfg = make_config(tmp, [
        {"path": str(SELF_INSTRUCT), "format": "alpaca", "fields": {"output": "response"}},
        {"path": str(NULL_MODEL)},
        {"path": str(ALPACA_DEMO)},
    ])  # fmt: skip
    lineage = Lineage(tmp / "l.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    result = curate(cfg, lineage, run)
    by_source = {}
    for r in lineage.verdicts_by_source(run):
        by_source.setdefault(r["source"], {})[r["verdict"]] = r["n"]
    return result, lineage, run, by_source


def test_conservation_on_real_files(real_run):
    result, lineage, run, _ = real_run
    written = sum(len(f.read_text().splitlines()) for f in (SELF_INSTRUCT,))
    written += sum(len(json.loads(f.read_text())) for f in (NULL_MODEL, ALPACA_DEMO))
    assert written == 252 + 805 + 999 == result.n_input
    assert_conserved(lineage, run, written)
    assert {f["rows"] for f in result.files} == {252, 805, 999}


def test_self_instruct_empty_responses_are_schema_rejections(real_run):
    _, lineage, run, by_source = real_run
    assert by_source[str(SELF_INSTRUCT)] == {"accepted": 204, "schema": 48}
    details = lineage.query(
        "SELECT detail FROM row_verdicts WHERE run_id = ? AND source = ? AND reason = 'schema'",
        [run, str(SELF_INSTRUCT)],
    )
    assert all("messages[1].content: empty (assistant)" in d["detail"] for d in details)


def test_null_model_constant_answer_is_one_cluster_kept_once(real_run):
    _, lineage, run, by_source = real_run
    assert by_source[str(NULL_MODEL)] == {"accepted": 1, "duplicate_response": 804}
    kept = lineage.query(
        "SELECT DISTINCT duplicate_of, cluster_id FROM row_verdicts WHERE run_id = ? "
        "AND source = ? AND status = 'rejected'",
        [run, str(NULL_MODEL)],
    )
    assert len(kept) == 1 and kept[0]["duplicate_of"] == f"{NULL_MODEL}:1"


def test_alpaca_demo_duplicate_prompts_are_exact_duplicates(real_run):
    *_, by_source = real_run
    assert by_source[str(ALPACA_DEMO)] == {"accepted": 985, "exact_duplicate": 14}


def test_report_shows_the_defects(real_run):
    result, *_ = real_run
    html = result.report.read_text()
    for reason in ("schema", "exact_duplicate", "duplicate_response"):
        assert reason in html
    assert "davinci-t0-ft_predictions.jsonl" in html and "<mark>" in html
