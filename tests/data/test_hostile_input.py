"""Hostile and broken input: text arrives as written, one bad row never aborts a run.

Each file mixes good rows with one bad kind; every test counts the rows it wrote and checks
that each comes out exactly once (a record or a rejection with the right reason), and that the
good rows after a bad one are still read.
"""

from __future__ import annotations

import io
import json
import os
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_conserved, make_config

from tunegate.curation.run import CurationError, curate
from tunegate.data.ingest import Rejected, SourceError, ingest_file, source_files
from tunegate.data.records import Record
from tunegate.lineage import Lineage

pytestmark = pytest.mark.unit

GOOD = {"instruction": "Name a colour.", "output": "Blue."}


def line(row: object) -> bytes:
    return json.dumps(row).encode() + b"\n"


def judged(path, **kw) -> list[tuple[str, str]]:
    """(kind, detail) per row: ("ok", answer) for a record, (reason, detail) for a rejection."""
    out = []
    for item in ingest_file(path, "auto", "human", **kw):
        if isinstance(item, Record):
            out.append(("ok", item.messages[-1][1]))
        else:
            assert isinstance(item, Rejected)
            out.append((item.reason, item.detail))
    return out


def test_jsonl_bom_nesting_bytes_surrogates_and_size(tmp_path):
    path = tmp_path / "d.jsonl"
    deep = b'{"instruction": "x", "output": ' + b"[" * 3000 + b"]" * 3000 + b"}\n"
    path.write_bytes(
        b"\xef\xbb\xbf" + line(GOOD)  # Excel's "UTF-8" adds a byte-order mark
        + deep  # RecursionError in json.loads
        + b'{"instruction": "caf\xe9", "output": "x"}\n'  # Latin-1 byte in a UTF-8 file
        + line({"instruction": "q", "output": "\ud800"})  # valid JSON, no text
        + b'{"instruction": "q", "output": "' + b"a" * 9000 + b'"}\n'  # over 8 KiB
        + line(GOOD | {"output": "Red."})
    )  # fmt: skip
    rows = judged(path, max_row_bytes=8192)
    assert [k for k, _ in rows] == ["ok", "schema", "schema", "schema", "too_long", "ok"]
    assert rows[0][1] == "Blue." and rows[5][1] == "Red."
    assert "nested too deeply" in rows[1][1]
    offset = len(b"\xef\xbb\xbf" + line(GOOD) + deep) + len(b'{"instruction": "caf')
    assert f"not valid utf-8: byte 0xe9 at offset {offset} of the file" in rows[2][1]
    assert "unpaired surrogate" in rows[3][1]
    assert "row is 9,035 bytes, over data.max_row_bytes = 8,192" in rows[4][1]


def test_a_declared_encoding_decodes_what_utf8_would_reject(tmp_path):
    path = tmp_path / "legacy.csv"
    text = "instruction,output\r\nCaf\xe9 au lait?,Oui \u2013 bien s\xfbr.\r\n"
    path.write_bytes(text.encode("cp1252"))
    assert judged(path)[0][0] == "schema"
    assert judged(path, encoding="cp1252") == [("ok", "Oui \u2013 bien s\xfbr.")]


def test_csv_bom_extra_cells_bytes_and_an_oversized_quoted_cell(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(
        b"\xef\xbb\xbfinstruction,output\r\n"
        b"Name a colour.,Blue.\r\n"
        b"Name a colour.,Green.,surprise\r\n"  # a cell past the header: not dropped silently
        b"Caf\xe9?,x\r\n"
        b'"' + b"a" * 5000 + b'\r\n'  # an oversized line that opens a quote it never closes
        b"Name a colour.,Red.\r\n"  # must not be swallowed by that quote
        b'"two\r\nlines",Yellow.\r\n'
    )  # fmt: skip
    rows = judged(path, max_row_bytes=4096)
    assert [k for k, _ in rows] == ["ok", "schema", "schema", "too_long", "ok", "ok"]
    assert [a for k, a in rows if k == "ok"] == ["Blue.", "Red.", "Yellow."]
    assert "d.csv:3 (row 2): field '<row>': 3 cells for 2 columns" in rows[1][1]
    assert "byte 0xe3" not in rows[2][1] and "byte 0xe9 at offset" in rows[2][1]
    assert "d.csv:5 (row 4):" in rows[3][1]


def test_json_array_oversized_element_is_skipped_without_losing_the_next(tmp_path):
    path = tmp_path / "d.json"
    big = {"instruction": "q", "output": "x" * 10_000, "nested": [[{"a": "]}"}]]}
    body = [GOOD, big, GOOD | {"output": "Red."}]
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(body).encode())
    rows = judged(path, max_row_bytes=4096)
    assert [k for k, _ in rows] == ["ok", "too_long", "ok"] and rows[2][1] == "Red."
    path.write_bytes(b'[{"instruction": "caf\xe9", "output": "x"}, ' + json.dumps(GOOD).encode()
                     + b"]")  # fmt: skip
    rows = judged(path)
    assert [k for k, _ in rows] == ["schema", "ok"]
    assert "byte 0xe9 at byte 20 of the row" in rows[0][1]


def test_a_huge_line_is_never_held_in_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    with path.open("wb") as f:
        f.write(line(GOOD))
        f.write(b'{"instruction": "q", "output": "')
        for _ in range(30):
            f.write(b"a" * (1 << 20))
        f.write(b'"}\n')
        f.write(line(GOOD))
    tracemalloc.start()
    rows = judged(path)  # the default limit: 1 MiB
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [k for k, _ in rows] == ["ok", "too_long", "ok"]
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for a 30 MiB line"


def test_parquet_rows_over_the_limit_are_too_long(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, {"instruction": "q", "output": "x" * 9000}]), path)
    assert [k for k, _ in judged(path, max_row_bytes=4096)] == ["ok", "too_long"]


def test_unreadable_files_are_one_clear_error(tmp_path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty.parquet: cannot read this file: ArrowInvalid"):
        list(ingest_file(empty, "auto", "human"))
    loop = tmp_path / "loop.jsonl"
    os.symlink(loop, loop)
    with pytest.raises(FileNotFoundError, match="symbolic link that does not resolve"):
        source_files(loop)
    folder = tmp_path / "folder"
    folder.mkdir()
    os.symlink(folder / "self.jsonl", folder / "self.jsonl")  # found by walking the folder
    with pytest.raises(SourceError, match=r"self.jsonl: cannot read this file: OSError"):
        list(ingest_file(source_files(folder)[0], "auto", "human"))


@pytest.mark.integration
def test_curation_records_every_hostile_row_and_fails_cleanly_on_a_bad_file(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(line(GOOD) + b"[" * 3000 + b"\n" + b'{"a": "\xff"}\n' + b"x" * 5000 + b"\n")
    cfg = make_config(tmp_path, [{"path": "d.jsonl"}], contracts={"batch_suite": None},
                      data={"sources": [{"path": "d.jsonl"}], "min_accepted_rows": 1,
                            "max_row_bytes": 4096})  # fmt: skip
    lineage = Lineage(cfg.workspace_dir / "lineage.duckdb")
    run = lineage.start_run("test", cfg.config_hash(), "{}")
    curate(cfg, lineage, run)
    assert assert_conserved(lineage, run, 4) == {"accepted": 1, "schema": 2, "too_long": 1}
    (tmp_path / "e.parquet").write_bytes(b"")
    bad = make_config(tmp_path, [{"path": "d.jsonl"}, {"path": "e.parquet"}],
                      contracts={"batch_suite": None})  # fmt: skip
    run = lineage.start_run("test", bad.config_hash(), "{}")
    with pytest.raises(CurationError, match=r"^source e.parquet: .*e.parquet: cannot read"):
        curate(bad, lineage, run)


@pytest.mark.integration
def test_untrusted_text_is_printed_as_text_not_rich_markup(tmp_path):
    from rich.console import Console
    from typer.testing import CliRunner

    from tunegate.cli import app
    from tunegate.cli.output import rows_table

    rows = [{"messages": [{"role": "[/bold]", "content": "hi"}]},
            {"messages": [{"role": "[link=https://evil.test]x[/link]", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "Hello."}]}]  # fmt: skip
    (tmp_path / "d.jsonl").write_bytes(b"".join(line(r) for r in rows))
    cfg = make_config(tmp_path, [{"path": "d.jsonl"}], contracts={"batch_suite": None})
    lineage = Lineage(cfg.workspace_dir / "lineage.duckdb")
    run = lineage.start_run("test", cfg.config_hash(), "{}")
    curate(cfg, lineage, run)
    lineage.end_run(run, "completed")
    res = CliRunner().invoke(app, ["verdicts", "-w", str(cfg.workspace_dir), "--limit", "5"])
    assert res.exit_code == 0, res.output  # a `[/bold]` role used to crash the table
    assert "\x1b]8;" not in res.output  # no terminal hyperlink
    wide = Console(file=io.StringIO(), width=400, force_terminal=True)
    wide.print(rows_table("verdicts", lineage.query("SELECT detail FROM row_verdicts")))
    shown = wide.file.getvalue()
    assert "[/bold]" in shown and "[link=https://evil.test]x[/link]" in shown
    assert "\x1b]8;" not in shown
