"""Curation's own stages: one verdict per input row, every reason code, conservation on each input.

Every test that curates asserts conservation (input rows = accepted + rejected, one verdict
per row) against the number of rows it wrote, counted without tunegate.
"""

import json

import pytest
from conftest import assert_conserved, make_config, write_jsonl

from tunegate.curation.funnel import AcceptedRecords, RunVerdicts
from tunegate.curation.run import CurationError, curate, curate_records
from tunegate.lineage import Lineage

pytestmark = pytest.mark.integration


def rows():
    good = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."}
            for i in range(5)]  # fmt: skip
    return [
        *good,
        {"instruction": "question 0? ", "input": "", "output": "answer  0."},  # exact dup
        {"instruction": "Empty", "input": "", "output": "   "},  # empty answer
        '{"instruction": "cut',  # bad JSON
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]},
    ]


BAD_TURNS = [
    {"messages": [{"role": "user", "content": "u"}, {"role": "user", "content": "v"}]},
    {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]},
]


def test_every_row_gets_a_verdict_and_conservation_holds(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", rows())
    write_jsonl(tmp_path / "b.jsonl", BAD_TURNS)
    cfg = make_config(tmp_path, [{"path": "a.jsonl"}, {"path": "b.jsonl"}])
    lineage = Lineage(tmp_path / "l.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    result = curate(cfg, lineage, run)
    assert assert_conserved(lineage, run, 11) == {"accepted": 5, "schema": 5, "exact_duplicate": 1}
    assert result.n_input == 11
    details = {
        (r["source"][-7:], r["source_row"]): r["detail"]
        for r in lineage.query(
            "SELECT source, source_row, detail FROM row_verdicts WHERE status = 'rejected'"
        )
    }
    assert "same conversation as" in details["a.jsonl", 6] and ":1 " in details["a.jsonl", 6]
    assert "messages[1].content: empty" in details["a.jsonl", 7]
    assert "not valid JSON" in details["a.jsonl", 8]
    assert "field 'instruction': missing" in details["a.jsonl", 9]  # a.jsonl is alpaca
    assert "messages[1].role: expected assistant" in details["b.jsonl", 1]
    assert "messages[0].role: expected user" in details["b.jsonl", 2]
    assert "last turn must be assistant" in details["b.jsonl", 2]
    assert lineage.query("SELECT count(*) AS n FROM records")[0]["n"] == 5
    sources = lineage.query("SELECT n_rows FROM sources ORDER BY path")
    assert [r["n_rows"] for r in sources] == [9, 2]


@pytest.mark.unit
def test_first_occurrence_is_kept_deterministically(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", rows())
    cfg = make_config(tmp_path, [{"path": "a.jsonl"}])
    first = curate_records(cfg)
    second = curate_records(cfg)
    for result in (first, second):  # in memory: one verdict per written row, nothing else
        assert [v.source_row for v in result.verdicts] == list(range(1, 10))
        assert len(result.accepted) == sum(v.status == "accepted" for v in result.verdicts) == 5
    assert [v.status for v in first.verdicts] == [v.status for v in second.verdicts]
    assert first.verdicts[0].status == "accepted" and first.verdicts[5].reason == "exact_duplicate"


# --- every reason code of curation's own stages -------------------------------------------------

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
)


def text(seed: int, n: int = 40) -> str:
    """A deterministic sentence of n words, different for different seeds."""
    w = WORDS.split()
    return " ".join(f"{w[(seed * 7 + k * 3) % len(w)]}{(seed * 31 + k) % 97}" for k in range(n))


def run_curate(tmp_path, sources, n_input, **overrides):
    """Curate the sources (n_input rows written) and assert conservation."""
    cfg = make_config(tmp_path, sources, **overrides)
    lineage = Lineage(tmp_path / "l.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    result = curate(cfg, lineage, run)
    assert_conserved(lineage, run, n_input)
    assert result.n_input == n_input and len(result.accepted) == result.reasons["accepted"]
    return result, lineage, run


def verdict_rows(lineage, run):
    return {
        r["source_row"]: r
        for r in lineage.query(
            "SELECT * FROM row_verdicts WHERE run_id = ? ORDER BY source, source_row", [run]
        )
    }


def test_near_duplicates_name_the_kept_row_and_share_a_cluster(tmp_path):
    base = text(1, 60)
    edited = base.replace(base.split()[30], "changed", 1)  # one word: Jaccard ~0.95
    write_jsonl(
        tmp_path / "n.jsonl",
        [
            {"instruction": "Summarise this.", "output": base},
            {"instruction": "Summarise this.", "output": text(2, 60)},
            {"instruction": "Summarise this.", "output": edited},
            {"instruction": "Summarise this!", "output": edited + " extra"},
        ],
    )
    _, lineage, run = run_curate(tmp_path, [{"path": "n.jsonl"}], 4)
    v = verdict_rows(lineage, run)
    reasons = [v[i]["reason"] for i in (1, 2, 3, 4)]
    assert reasons == [None, None, "near_duplicate", "near_duplicate"]
    assert v[3]["duplicate_of"].endswith("n.jsonl:1") and "Jaccard" in v[3]["detail"]
    assert v[3]["cluster_id"] == v[4]["cluster_id"] and v[3]["cluster_id"].startswith("n-")


def test_exact_duplicates_record_cluster_and_first_occurrence(tmp_path):
    write_jsonl(
        tmp_path / "e.jsonl",
        [
            {"instruction": "Hello ,  world", "output": "Fine."},
            {"instruction": "hello, world", "output": "fine."},
            {"instruction": "HELLO, WORLD", "output": "FINE."},
        ],
    )
    _, lineage, run = run_curate(tmp_path, [{"path": "e.jsonl"}], 3)
    v = verdict_rows(lineage, run)
    assert v[1]["status"] == "accepted"
    assert {v[2]["reason"], v[3]["reason"]} == {"exact_duplicate"}
    assert v[2]["duplicate_of"].endswith("e.jsonl:1") and v[2]["cluster_id"] == v[3]["cluster_id"]


def test_duplicate_response_long_answers_only(tmp_path):
    long_answer = text(5, 30)
    write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"instruction": text(10, 10), "output": long_answer},
            {"instruction": text(11, 10), "output": long_answer},  # same long answer: rejected
            {"instruction": "Is the sky blue?", "output": "Yes"},
            {"instruction": "Is water wet?", "output": "Yes"},  # short answers may repeat
        ],
    )
    _, lineage, run = run_curate(tmp_path, [{"path": "r.jsonl"}], 4)
    v = verdict_rows(lineage, run)
    assert [v[i]["reason"] for i in (1, 2, 3, 4)] == [None, "duplicate_response", None, None]
    assert v[2]["duplicate_of"].endswith("r.jsonl:1") and v[2]["cluster_id"].startswith("r-")


def test_contamination_ngram_short_text_and_near_copy(tmp_path):
    ticket = text(20, 30)
    short = "what is the boiling point of water at sea level"  # 10 words, < 13
    near = text(21, 40)
    write_jsonl(
        tmp_path / "evals" / "heldout.jsonl",
        [
            {"id": "h-1", "ticket": ticket, "target": "refund"},
            {"id": "h-2", "ticket": short, "target": "100 C"},
            {"id": "h-3", "ticket": near, "target": "x"},
        ],
    )
    words = near.split()
    for k in (12, 25, 38):  # an edit every 13 words: no 13-gram survives, 79% of 3-shingles do
        words[k] = "edited"
    write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"instruction": "Classify: " + " ".join(ticket.split()[5:20]), "output": "refund"},
            {"instruction": f"Quiz. {short.capitalize()}?", "output": "100 degrees."},
            {"instruction": "Classify: " + " ".join(words), "output": "x"},
            {"instruction": text(22, 30), "output": "clean"},
            {"instruction": "What is the boiling point?", "output": "It depends."},
        ],
    )
    _, lineage, run = run_curate(
        tmp_path, [{"path": "c.jsonl"}], 5, eval={"heldout_path": "evals/heldout.jsonl"}
    )
    v = verdict_rows(lineage, run)
    assert [v[i]["reason"] for i in range(1, 6)] == [
        "contamination",
        "contamination",
        "contamination",
        None,
        None,
    ]
    assert v[1]["eval_item"] == "evals/heldout.jsonl#h-1" and "13-gram" in v[1]["detail"]
    assert v[2]["eval_item"].endswith("#h-2") and "whole 10-word eval text" in v[2]["detail"]
    assert v[3]["eval_item"].endswith("#h-3") and "shingles" in v[3]["detail"]
    assert v[3]["detail"].count("13-gram") == 0


def test_eval_files_are_configurable_and_missing_ones_reported(tmp_path):
    write_jsonl(tmp_path / "suite" / "arc.jsonl", [{"query": text(30, 20), "choices": ["a", "b"]}])
    write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"instruction": text(30, 20), "output": "a"},
            {"instruction": text(31, 20), "output": "b"},
        ],
    )
    result, lineage, run = run_curate(
        tmp_path, [{"path": "d.jsonl"}], 2, contamination={"eval_files": ["suite", "nowhere"]}
    )
    row = verdict_rows(lineage, run)[1]
    assert row["reason"] == "contamination" and row["eval_item"] == "suite/arc.jsonl:1"
    html = result.report.read_text()
    assert "not found" in html and "nowhere" in html


def test_conservation_on_every_input_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import datasets

    rows_ok = [
        {"instruction": f"q{i} " + text(i, 5), "input": "", "output": f"a{i}"} for i in range(6)
    ]
    body = ",\n".join(json.dumps(r) for r in rows_ok[:3])
    bad = '{"instruction": "x", "output": tru},\n{"instruction": "ok", "output": 3}'
    (tmp_path / "a.json").write_text(f"[\n{body},\n{bad}\n]")
    (tmp_path / "b.csv").write_text("instruction,input,output\nq9,,a9\n,,\n")
    pq.write_table(pa.Table.from_pylist(rows_ok[3:]), tmp_path / "c.parquet")
    empty = {"instruction": "z", "input": "", "output": ""}
    datasets.Dataset.from_list([*rows_ok[:2], empty]).save_to_disk(str(tmp_path / "saved"))
    sources = [{"path": "a.json"}, {"path": "b.csv"}, {"path": "c.parquet"}, {"path": "saved"}]
    result, lineage, run = run_curate(tmp_path, sources, 13)
    counts = lineage.verdict_counts(run)
    files = {f["path"].rsplit("/", 1)[-1]: f["rows"] for f in result.files}
    assert files == {"a.json": 5, "b.csv": 2, "c.parquet": 3, "saved": 3}
    assert counts["exact_duplicate"] == 2  # the saved dataset repeats rows 1-2 of a.json
    assert counts["schema"] == 4  # broken JSON, wrong type, empty CSV row, empty answer
    raw = {r["source_row"]: r["raw"] for r in lineage.query(
        "SELECT source_row, raw FROM row_verdicts WHERE source LIKE '%a.json' "
        "AND status = 'rejected'")}  # fmt: skip
    assert "tru}" in raw[4] and '"output": 3' in raw[5]


def test_recorded_run_streams_verdicts_and_spools_accepted_rows(tmp_path):
    write_jsonl(
        tmp_path / "s.jsonl", [{"instruction": text(i, 8), "output": f"ok {i}"} for i in range(30)]
    )
    result, *_ = run_curate(tmp_path, [{"path": "s.jsonl"}], 30)
    assert isinstance(result.accepted, AcceptedRecords) and isinstance(result.verdicts, RunVerdicts)
    assert len(result.accepted) == 30 and result.accepted[-1].source_row == 30
    assert [v.source_row for v in result.verdicts] == list(range(1, 31))
    assert result.reasons == {"accepted": 30}
    spool = result.accepted.path
    assert spool.is_file() and len(spool.read_text().splitlines()) == 30
    assert result.report.is_file() and (result.report.parent / "gx" / "index.html").is_file()


def test_batch_expectations_block_the_run_with_a_clear_message(tmp_path):
    write_jsonl(
        tmp_path / "syn.jsonl",
        [{"instruction": text(i, 8), "output": f"ok {i}"} for i in range(10)],
    )
    cfg = make_config(tmp_path, [{"path": "syn.jsonl", "origin": "synthetic"}])
    lineage = Lineage(tmp_path / "l.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    with pytest.raises(CurationError) as exc:
        curate(cfg, lineage, run)
    assert assert_conserved(lineage, run, 10) == {"accepted": 10}  # verdicts kept to look at
    message = str(exc.value)
    assert "batch expectations failed" in message and "is_synthetic" in message
    assert "gx/validations/" in message  # the result page itself (the index needs CDN scripts)
    report = next((tmp_path / "reports").glob("*/quality.html"))
    assert "FAIL" in report.read_text()


def test_too_few_accepted_rows_block_the_run(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", rows())
    cfg = make_config(
        tmp_path,
        [],
        data={"sources": [{"path": "a.jsonl"}], "min_accepted_rows": 6},
        contracts={"batch_suite": None},
    )  # the GX row count would block first
    lineage = Lineage(tmp_path / "l.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    with pytest.raises(CurationError, match=r"only 5 of 9 rows accepted \(data.min_accepted_rows"):
        curate(cfg, lineage, run)
    assert assert_conserved(lineage, run, 9)["accepted"] == 5


@pytest.mark.unit
def test_run_writer_writes_in_transactions_and_surfaces_a_failed_write(tmp_path):
    """Lineage writes run in a background thread: every row arrives, and errors are not lost."""
    from tunegate.curation.run import RunWriter
    from tunegate.data.records import Record
    from tunegate.data.verdicts import Verdict

    class Lineage:
        def __init__(self, fail: bool = False):
            self.calls, self.fail = [], fail

        def record_verdicts(self, run_id, verdicts):
            if self.fail:
                raise OSError("disk full")
            self.calls.append(len(verdicts))

        def record_records(self, records):
            pass

    rows = [Record((("user", f"q{i}"), ("assistant", "a")), "human", "s", i) for i in range(10)]
    verdicts = [Verdict("s", i, r.record_id, "curate", "accepted") for i, r in enumerate(rows)]
    ok = Lineage()
    writer = RunWriter(ok, "run", AcceptedRecords(tmp_path / "a.jsonl"), every=4)
    for k in range(0, 10, 2):
        writer.add(verdicts[k : k + 2], rows[k : k + 2])
    writer.close()
    writer.shutdown()
    assert ok.calls == [4, 4, 2] and len(writer.spool) == 10
    broken = RunWriter(Lineage(fail=True), "run", AcceptedRecords(tmp_path / "b.jsonl"), every=4)
    broken.add(verdicts, rows)  # handed to the thread: the error comes at the next wait
    with pytest.raises(OSError, match="disk full"):
        broken.close()
    broken.shutdown()
