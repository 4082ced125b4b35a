"""Ingest: stream raw files row by row and turn each row into a canonical record.

Reads JSONL, JSON (an array, or JSON values one after another), CSV, Parquet, directories
of them and `datasets` `save_to_disk` folders, in constant memory: a JSON array is parsed
one element at a time, never loaded whole. Formats: alpaca (instruction/input/output),
sharegpt (conversations of from/value), messages (role/content, optional system) and
prompt/completion, detected per file from its first readable row unless the source says
which; a source's `fields` maps canonical keys to its own (e.g. `output: response`).

A row that does not parse or convert is not dropped and does not crash the run: it
becomes a rejected row (`schema`) whose detail names the file, the line and the field,
and which keeps the raw text so a data team can fix and resubmit it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegate.records import ROLES, Record

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}  # fmt: skip
_CHUNK = 1 << 20  # characters read at a time from a JSON file
_MAX_ELEMENT = 256 << 20  # a JSON element larger than this is refused, not buffered


class RowError(ValueError):
    """A row that cannot become a record; `field` names the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~3 µs a row to build
class RawRow:
    """One row as read from a file: 1-based row number, the line it starts on, its text."""

    source: str
    row: int
    data: dict[str, Any] | None
    error: str | None = None
    line: int | None = None
    text: str | None = field(default=None, repr=False)

    @property
    def raw(self) -> str:
        """The row as written in the file (or as JSON, for CSV, Parquet and Arrow rows)."""
        if self.text is not None:
            return self.text.rstrip("\n")
        return json.dumps(self.data, ensure_ascii=False, default=str)


@dataclass(slots=True)
class Rejected:
    """A row refused at ingest, with where and why, and its raw text."""

    source: str
    row: int
    field: str
    message: str
    line: int | None = None
    raw: str | None = field(default=None, repr=False)

    @property
    def detail(self) -> str:
        line = self.row if self.line is None else self.line
        where = f"{self.source}:{line}" + ("" if line == self.row else f" (row {self.row})")
        return f"{where}: field '{self.field}': {self.message}"


# -- files -------------------------------------------------------------------------------------


def is_saved_dataset(path: Path) -> bool:
    """A `datasets` `save_to_disk` folder of one split (or of a DatasetDict)."""
    return path.is_dir() and (
        (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    )


def _saved_splits(path: Path) -> list[Path]:
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        return [path / s for s in splits]
    return [path]


def source_files(path: Path) -> list[Path]:
    """The data files of a source: the file itself, a saved dataset's splits, or a directory's
    data files and saved datasets, sorted by path."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if is_saved_dataset(path):
        return _saved_splits(path)
    found: list[Path] = []
    for root, dirs, files in os.walk(path):
        here = Path(root)
        for d in sorted(dirs):
            if is_saved_dataset(here / d):
                found.extend(_saved_splits(here / d))
        dirs[:] = sorted(d for d in dirs if not is_saved_dataset(here / d))
        found.extend(here / f for f in files if Path(f).suffix in FILE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"{path}: no {'/'.join(FILE_SUFFIXES)} files in this directory")
    return sorted(found)


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with p.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def read_rows(path: Path) -> Iterator[RawRow]:
    """Stream rows from one data file or saved dataset, in file order, in bounded memory."""
    name = str(path)
    if path.is_dir():
        yield from _saved_dataset_rows(path)
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    yield _json_row(name, i, line)
    elif path.suffix == ".json":
        yield from _json_file_rows(path)
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
            line = 2  # the header is line 1
            for i, item in enumerate(reader, start=1):
                data = {k: v for k, v in item.items() if k is not None}
                yield RawRow(name, i, data, line=line)
                line = reader.line_num + 1
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for item in batch.to_pylist():
                i += 1
                yield RawRow(name, i, item)
    else:
        raise ValueError(f"{path}: unsupported file type (use {', '.join(FILE_SUFFIXES)})")


def _saved_dataset_rows(path: Path) -> Iterator[RawRow]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    i = 0
    for table in ds.with_format("arrow").iter(batch_size=4096):
        for item in table.to_pylist():
            i += 1
            yield RawRow(str(path), i, item)


def _json_row(source: str, row: int, line: str) -> RawRow:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        return RawRow(source, row, None, f"not valid JSON ({exc.msg}: column {exc.colno})",
                      line=row, text=line)  # fmt: skip
    if not isinstance(data, dict):
        return RawRow(source, row, None, f"expected an object, got {type(data).__name__}",
                      line=row, text=line)  # fmt: skip
    return RawRow(source, row, data, line=row, text=line)


_WS = re.compile(r"[ \t\r\n]*")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]|"')


def _element_end(buf: str, pos: int) -> int | None:
    """End of the bracketed JSON element starting at pos (strings skipped); None: not in buf.

    Used only after a parse error, to skip exactly one broken element and carry on.
    """
    if buf[pos] not in "{[":
        m = re.compile(r"[,\]\n]").search(buf, pos)
        return m.start() if m else None
    depth = 0
    for m in _TOKEN.finditer(buf, pos):
        tok = m.group()
        if tok == '"':
            return None  # an unterminated string: the element runs past this buffer
        if tok in "{[":
            depth += 1
        elif tok in "}]":
            depth -= 1
            if depth == 0:
                return m.end()
    return None


def _json_file_rows(path: Path) -> Iterator[RawRow]:
    """Rows of a .json file: the elements of a top-level array, streamed; or, when the file
    does not start with '[', JSON values one after another (JSON Lines saved as .json)."""
    name = str(path)
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        buf, pos, line, row, eof = "", 0, 1, 0, False

        def fill() -> None:
            nonlocal buf, pos, eof
            more = f.read(_CHUNK)
            eof = not more
            buf, pos = buf[pos:] + more, 0

        def skip_ws() -> None:
            nonlocal pos, line
            end = _WS.match(buf, pos).end()  # type: ignore[union-attr]
            line += buf.count("\n", pos, end)
            pos = end

        fill()
        skip_ws()
        while pos == len(buf) and not eof:
            fill()
            skip_ws()
        array = buf[pos : pos + 1] == "["
        pos += array
        while True:
            skip_ws()
            if pos >= len(buf) - 1 and not eof:  # keep one look-ahead character
                fill()
                continue
            if pos >= len(buf):
                return
            if array and buf[pos] == "]":
                return
            if array and buf[pos] == ",":
                pos += 1
                continue
            start, start_line = pos, line
            try:
                value, end = decoder.raw_decode(buf, pos)
                if end == len(buf) and not eof and not isinstance(value, dict | list):
                    raise json.JSONDecodeError("value may continue", buf, end)  # e.g. a number
            except json.JSONDecodeError as exc:
                end_or_none = _element_end(buf, pos)
                if end_or_none is None and not eof and len(buf) - pos < _MAX_ELEMENT:
                    fill()  # the element runs past the buffer: read on and try again
                    continue
                end = len(buf) if end_or_none is None else end_or_none
                row += 1
                yield RawRow(name, row, None, f"not valid JSON ({exc.msg})", line=start_line,
                             text=buf[start:end][:100_000])  # fmt: skip
                line += buf.count("\n", start, end)
                pos = end
                if end_or_none is None and not eof:  # too large to find its end: give up
                    return
                continue
            row += 1
            text = buf[start:end]
            if isinstance(value, dict):
                yield RawRow(name, row, value, line=start_line, text=text)
            else:
                yield RawRow(name, row, None, f"expected an object, got {type(value).__name__}",
                             line=start_line, text=text)  # fmt: skip
            line += buf.count("\n", start, end)
            pos = end


# -- formats -----------------------------------------------------------------------------------


def _keys(fields: Mapping[str, str] | None) -> Callable[[str], str]:
    """Canonical key -> this source's key."""
    mapping = fields or {}
    return lambda name: mapping.get(name, name)


def detect_format(data: dict[str, Any], fields: Mapping[str, str] | None = None) -> str | None:
    """Guess a row's format from its keys (after the source's field mapping); None: no fit."""
    k = _keys(fields)
    if k("messages") in data:
        return "messages"
    if k("conversations") in data:
        return "sharegpt"
    if k("instruction") in data or k("output") in data:
        return "alpaca"
    if k("prompt") in data and k("completion") in data:
        return "prompt_completion"
    return None


def _text(data: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise RowError(key, "missing")
        return ""
    if not isinstance(value, str):
        raise RowError(key, f"expected a string, got {type(value).__name__}")
    return value


def _turn_list(data: dict[str, Any], key: str) -> list[Any]:
    turns = data.get(key)
    if isinstance(turns, str):  # CSV cells and some Parquet columns hold the list as JSON text
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            raise RowError(key, "expected a list of turns, got text that is not JSON") from None
    if not isinstance(turns, list):
        raise RowError(key, "missing" if turns is None else "expected a list of turns")
    if not turns:
        raise RowError(key, "no turns")
    return turns


def to_messages(
    data: dict[str, Any], fmt: str, fields: Mapping[str, str] | None = None
) -> tuple[tuple[str, str], ...]:
    """Convert one row of a known format to canonical (role, content) pairs.

    `fields` maps canonical keys to this source's keys (`{"output": "response"}`); errors
    name the source's key, so the detail points at what is in the file.
    """
    k = _keys(fields)
    turns: list[tuple[str, str]] = []
    system = data.get(k("system"))
    if isinstance(system, str) and system.strip():
        turns.append(("system", system))
    if fmt == "alpaca":
        instruction = _text(data, k("instruction"))
        extra = _text(data, k("input"), required=False)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        for i, pair in enumerate(data.get(k("history")) or []):
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                raise RowError(f"{k('history')}[{i}]", "expected a [user, assistant] pair")
            turns += [("user", str(pair[0])), ("assistant", str(pair[1]))]
        return (*turns, ("user", prompt), ("assistant", _text(data, k("output"))))
    if fmt == "prompt_completion":
        return (*turns, ("user", _text(data, k("prompt"))),
                ("assistant", _text(data, k("completion"))))  # fmt: skip
    if fmt in ("messages", "sharegpt"):
        key, role_key, content_key = (
            (k("messages"), k("role"), k("content")) if fmt == "messages"
            else (k("conversations"), k("from"), k("value"))
        )  # fmt: skip
        out = []
        for i, turn in enumerate(_turn_list(data, key)):
            if not isinstance(turn, dict):
                raise RowError(f"{key}[{i}]", "expected an object")
            role = turn.get(role_key)
            role = SHAREGPT_ROLES.get(role, role) if fmt == "sharegpt" else role
            if role not in ROLES:
                raise RowError(f"{key}[{i}].{role_key}", f"unknown role {turn.get(role_key)!r}")
            content = turn.get(content_key)
            if not isinstance(content, str):
                raise RowError(f"{key}[{i}].{content_key}", "missing or not a string")
            out.append((role, content))
        if turns and out[0][0] == "system":
            turns = []  # the conversation brings its own system message
        return (*turns, *out)
    raise ValueError(f"unknown format {fmt!r}")


def ingest_file(
    path: Path, fmt: str, origin: str, fields: Mapping[str, str] | None = None
) -> Iterator[Record | Rejected]:
    """Yield a record or a rejection for every row of one file, in file order."""
    detected = None if fmt == "auto" else fmt
    for raw in read_rows(path):
        if raw.data is None:
            yield Rejected(raw.source, raw.row, "<row>", raw.error or "unreadable", raw.line,
                           raw.raw)  # fmt: skip
            continue
        row_fmt = detected or detect_format(raw.data, fields)
        if row_fmt is None:
            keys = ", ".join(sorted(raw.data)) or "none"
            yield Rejected(raw.source, raw.row, "<row>", f"unknown format (keys: {keys})",
                           raw.line, raw.raw)  # fmt: skip
            continue
        detected = detected or row_fmt  # the first readable row fixes the file's format
        try:
            messages = to_messages(raw.data, row_fmt, fields)
        except RowError as exc:
            yield Rejected(raw.source, raw.row, exc.field, str(exc), raw.line, raw.raw)
            continue
        row_origin = (
            raw.data.get("origin") if raw.data.get("origin") in ("human", "synthetic") else origin
        )
        yield Record(messages, row_origin, raw.source, raw.row, {"format": row_fmt, "raw": raw})


def raw_text(record: Record) -> str | None:
    """The raw row a record came from (for rejected rows a data team will fix)."""
    raw = record.meta.get("raw")
    return raw.raw if isinstance(raw, RawRow) else None
