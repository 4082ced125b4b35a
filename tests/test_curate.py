from tunegate.curate import curate, curate_records
from tunegate.lineage import Lineage

from conftest import make_config, write_jsonl


def rows():
    good = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(5)]
    return [
        *good,
        {"instruction": "question 0? ", "input": "", "output": "answer  0."},  # exact dup (normalised)
        {"instruction": "Empty", "input": "", "output": "   "},                 # empty answer
        '{"instruction": "cut',                                                  # bad JSON
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
    counts = lineage.verdict_counts(run)
    assert counts == {"accepted": 5, "schema": 5, "exact_duplicate": 1}
    assert sum(counts.values()) == 11 == result.n_input
    details = {(r["source"][-7:], r["source_row"]): r["detail"] for r in lineage.query(
        "SELECT source, source_row, detail FROM row_verdicts WHERE status = 'rejected'")}
    assert "same conversation as" in details["a.jsonl", 6] and ":1 " in details["a.jsonl", 6]
    assert "messages[1].content: empty" in details["a.jsonl", 7]
    assert "not valid JSON" in details["a.jsonl", 8]
    assert "field 'instruction': missing" in details["a.jsonl", 9]  # a.jsonl is alpaca
    assert "messages[1].role: expected assistant" in details["b.jsonl", 1]
    assert "messages[0].role: expected user" in details["b.jsonl", 2]
    assert "last turn must be assistant" in details["b.jsonl", 2]
    assert lineage.query("SELECT count(*) AS n FROM records")[0]["n"] == 5
    assert [r["n_rows"] for r in lineage.query("SELECT n_rows FROM sources ORDER BY path")] == [9, 2]


def test_first_occurrence_is_kept_deterministically(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", rows())
    cfg = make_config(tmp_path, [{"path": "a.jsonl"}])
    first = curate_records(cfg)
    second = curate_records(cfg)
    assert [v.status for v in first.verdicts] == [v.status for v in second.verdicts]
    assert first.verdicts[0].status == "accepted" and first.verdicts[5].reason == "exact_duplicate"
