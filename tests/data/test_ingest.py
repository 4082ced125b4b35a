"""Ingest: every row of every file becomes one record or one `schema` rejection, streamed.

Conservation starts here: each test checks that a file's rows come out one item each.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

import tunegate.data.ingest as ingest_module
from tunegate.data.ingest import (
    Rejected,
    detect_format,
    ingest_file,
    read_rows,
    source_files,
    to_messages,
)
from tunegate.data.records import Record

pytestmark = pytest.mark.unit


def test_formats_convert_to_canonical_messages():
    assert to_messages({"instruction": "Do", "input": "x", "output": "y"}, "alpaca") == (
        ("user", "Do\n\nx"),
        ("assistant", "y"),
    )
    assert to_messages(
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
        "sharegpt",
    ) == (("user", "a"), ("assistant", "b"))
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    assert to_messages({"messages": msgs}, "messages")[0] == ("system", "s")
    assert to_messages({"prompt": "p", "completion": "c"}, "prompt_completion") == (
        ("user", "p"),
        ("assistant", "c"),
    )
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"foo": 1}) is None


def test_bad_rows_become_rejections_naming_file_row_and_field(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"instruction": "a", "output": "b"},
            '{"instruction": "broken',
            {"instruction": "a", "output": 3},
            {"instruction": "c"},
            [1, 2],
        ],
    )
    items = list(ingest_file(path, "auto", "human"))
    assert len(items) == 5 and isinstance(items[0], Record)
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert [r.row for r in rejected] == [2, 3, 4, 5]
    assert "not valid JSON" in rejected[0].detail and f"{path}:2" in rejected[0].detail
    assert rejected[1].field == "output" and "expected a string" in rejected[1].message
    assert rejected[2].field == "output" and rejected[2].message == "missing"


@pytest.mark.parametrize("suffix", ["json", "csv", "parquet"])
def test_json_csv_parquet(tmp_path, suffix):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(3)]
    path = tmp_path / f"d.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "csv":
        path.write_text("instruction,input,output\n" + "".join(f"q{i},,a{i}\n" for i in range(3)))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    items = list(ingest_file(path, "auto", "human"))
    assert [i.messages[-1][1] for i in items] == ["a0", "a1", "a2"]
    assert [i.source_row for i in items] == [1, 2, 3]


def test_row_origin_overrides_source_origin(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "a"},
                ],
                "origin": "synthetic",
            }
        ],
    )
    (rec,) = ingest_file(path, "auto", "human")
    assert rec.origin == "synthetic"


# --- streaming, saved datasets, field mappings, line numbers and raw text ---------------------


def test_json_array_streams_in_small_chunks_and_skips_a_broken_element(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "_CHUNK", 7)  # force many refills mid-element
    rows = [{"instruction": f"q{i}", "output": "a" * (i * 5)} for i in range(6)]
    body = ",\n".join(json.dumps(r, indent=1) for r in rows[:3])
    broken = '{"instruction": "bad", "output": tru}'
    (tmp_path / "a.json").write_text(f"[\n{body},\n{broken},\n{json.dumps(rows[3])}, 7\n]\n")
    out = list(read_rows(tmp_path / "a.json"))
    assert [r.row for r in out] == [1, 2, 3, 4, 5, 6]
    assert [r.data["instruction"] for r in out if r.data] == ["q0", "q1", "q2", "q3"]
    bad = out[3]
    assert bad.data is None and "not valid JSON" in bad.error and bad.raw == broken
    assert out[3].line == body.count("\n") + 3 and "expected an object" in out[5].error


def test_json_file_of_json_lines_and_unterminated_array(tmp_path):
    (tmp_path / "l.json").write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "q"}\n')
    items = list(ingest_file(tmp_path / "l.json", "auto", "human"))
    assert len(items) == 2 and isinstance(items[0], Record) and isinstance(items[1], Rejected)
    assert items[1].detail.endswith("field 'completion': missing") and ":2" in items[1].detail
    (tmp_path / "u.json").write_text('[{"prompt": "p", "completion": "c"}, {"prompt": "unter')
    out = list(read_rows(tmp_path / "u.json"))
    assert len(out) == 2 and out[1].data is None and out[1].raw.startswith('{"prompt": "unter')


def test_field_mapping_reads_a_renamed_answer(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "full", "instruction": "Do it.", "input": "x", "response": "done"},
            {"prompt": "full", "instruction": "Do it.", "input": "x"},
        ],
    )
    items = list(ingest_file(path, "alpaca", "human", {"output": "response"}))
    assert len(items) == 2
    assert items[0].messages == (("user", "Do it.\n\nx"), ("assistant", "done"))
    assert isinstance(items[1], Rejected) and items[1].field == "response"


def test_saved_datasets_and_directories(tmp_path):
    import datasets

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"u{i}"},
                {"role": "assistant", "content": f"a{i}"},
            ]
        }
        for i in range(3)
    ]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(
        str(tmp_path / "d" / "saved"))  # fmt: skip
    write_jsonl(tmp_path / "d" / "more.jsonl", [{"prompt": "p", "completion": "c"}])
    files = source_files(tmp_path / "d")
    assert [f.name for f in files] == ["more.jsonl", "test", "train"]  # no state.json as data
    items = list(ingest_file(files[2], "auto", "human"))
    assert [i.messages[-1][1] for i in items] == ["a0", "a1", "a2"]
    assert items[0].source.endswith("saved/train")


def test_messages_with_top_level_system_and_csv_json_cells(tmp_path):
    assert to_messages(
        {
            "system": "s",
            "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
        },
        "messages",
    )[0] == ("system", "s")
    (tmp_path / "m.csv").write_text(
        'messages\n"[{""role"": ""user"", ""content"": ""u""}, '
        '{""role"": ""assistant"", ""content"": ""a""}]"\nnot json\n'
    )
    items = list(ingest_file(tmp_path / "m.csv", "messages", "human"))
    assert len(items) == 2
    assert items[0].messages == (("user", "u"), ("assistant", "a"))
    assert isinstance(items[1], Rejected) and "not JSON" in items[1].message


def test_empty_turn_list_is_a_schema_error(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [{"messages": []}])
    (rej,) = ingest_file(path, "auto", "human")
    assert isinstance(rej, Rejected) and rej.message == "no turns"


def test_a_row_of_no_known_format_is_a_schema_error_naming_its_keys(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [
        {"question": "q", "answer": "a"},
        {"prompt": "p", "completion": "c"},
        {"question": "q2"},
    ])  # fmt: skip
    items = list(ingest_file(path, "auto", "human"))
    assert len(items) == 3 and isinstance(items[1], Record)
    assert [i.row for i in items if isinstance(i, Rejected)] == [1, 3]
    assert items[0].detail == f"{path}:1: field '<row>': unknown format (keys: answer, question)"
    assert items[0].raw == '{"question": "q", "answer": "a"}'
