import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunegate.ingest import Rejected, detect_format, ingest_file, to_messages
from tunegate.records import Record

from conftest import write_jsonl


def test_formats_convert_to_canonical_messages():
    assert to_messages({"instruction": "Do", "input": "x", "output": "y"}, "alpaca") == (
        ("user", "Do\n\nx"), ("assistant", "y"))
    assert to_messages({"conversations": [{"from": "human", "value": "a"},
                                          {"from": "gpt", "value": "b"}]}, "sharegpt") == (
        ("user", "a"), ("assistant", "b"))
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"}]
    assert to_messages({"messages": msgs}, "messages")[0] == ("system", "s")
    assert to_messages({"prompt": "p", "completion": "c"}, "prompt_completion") == (
        ("user", "p"), ("assistant", "c"))
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"foo": 1}) is None


def test_bad_rows_become_rejections_naming_file_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "a", "output": "b"},
        '{"instruction": "broken',
        {"instruction": "a", "output": 3},
        {"instruction": "c"},
        [1, 2],
    ])
    items = list(ingest_file(path, "auto", "human"))
    assert isinstance(items[0], Record)
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
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
         "origin": "synthetic"}])
    (rec,) = ingest_file(path, "auto", "human")
    assert rec.origin == "synthetic"
