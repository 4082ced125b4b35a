"""Ingest: stream raw files row by row and turn each row into a canonical record.

Reads JSONL, JSON (an array, or JSON values one after another), CSV, Parquet, directories
of them and `datasets` `save_to_disk` folders, in constant memory: a JSON array is parsed
one element at a time, never loaded whole. Formats: alpaca (instruction/input/output),
sharegpt (conversations of from/value), messages (role/content, optional system) and
prompt/completion, detected per file from its first readable row unless the source says
which; a source's `fields` maps canonical keys to its own (e.g. `output: response`).

A row that does not parse or convert is not dropped and does not crash the run: it
becomes a rejected row (`schema`) whose detail names the file, the line and the field,
and which keeps the raw text so a data team can fix and resubmit it. Text arrives as
written: JSONL and CSV are read as bytes, a UTF-8 byte-order mark is skipped, a row that is
not valid in the source's `encoding` is a `schema` rejection naming the byte offset (never
decoded to U+FFFD and trained on), a CSV row with more cells than the header is a `schema`
rejection, and a row over `data.max_row_bytes` is `too_long` without being held in memory.
A file that cannot be read at all (0-byte Parquet, a symlink loop) is one `SourceError`.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegate.data.records import ROLES, Record

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}  # fmt: skip
_CHUNK = 1 << 20  # characters read at a time from a JSON file
MAX_ROW_BYTES = 1 << 20  # default `data.max_row_bytes`: ~250k tokens, far past any row we train
_BOM = b"\xef\xbb\xbf"
_PREVIEW = 2000  # characters of an oversized row kept as its raw text
_INVALID = re.compile("[\udc80-\udcff]")  # bytes `surrogateescape` could not decode


class SourceError(RuntimeError):
    """A source file that cannot be read at all: one clear error naming it, not a traceback."""


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
    reason: str = "schema"  # of the rejection when `data` is None: `schema` or `too_long`

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
    reason: str = "schema"

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
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{path}: a symbolic link that does not resolve (a loop, or a "
                                "missing target)")  # fmt: skip
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


def read_rows(
    path: Path, max_row_bytes: int = MAX_ROW_BYTES, encoding: str = "utf-8"
) -> Iterator[RawRow]:
    """Stream rows from one data file or saved dataset, in file order, in bounded memory."""
    if path.is_dir():
        yield from _saved_dataset_rows(path)
    elif path.suffix == ".jsonl":
        yield from _jsonl_rows(path, max_row_bytes, encoding)
    elif path.suffix == ".json":
        yield from _json_file_rows(path, max_row_bytes, encoding)
    elif path.suffix == ".csv":
        yield from _csv_rows(path, max_row_bytes, encoding)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for item in batch.to_pylist():
                i += 1
                yield RawRow(str(path), i, item)
    else:
        raise ValueError(f"{path}: unsupported file type (use {', '.join(FILE_SUFFIXES)})")


def _lines(f: Any, limit: int) -> Iterator[tuple[int, bytes, int]]:
    """(byte offset, line, its full size) per line of a binary file; a BOM at the start is
    skipped; of a line longer than `limit` only `limit + 1` bytes are kept (the rest is read
    past, never held)."""
    offset = 0
    if f.read(3) != _BOM:
        f.seek(0)
    else:
        offset = 3
    while line := f.readline(limit + 1):
        size = len(line)
        if size > limit and not line.endswith(b"\n"):
            while more := f.readline(1 << 20):
                size += len(more)
                if more.endswith(b"\n"):
                    break
        yield offset, line, size
        offset += size


def _too_long(size: int, limit: int) -> str:
    return f"row is {size:,} bytes, over data.max_row_bytes = {limit:,} (not read further)"


def _decode_error(exc: UnicodeDecodeError, offset: int, encoding: str) -> str:
    byte = exc.object[exc.start : exc.start + 1].hex()
    return f"not valid {encoding}: byte 0x{byte} at offset {offset + exc.start} of the file"


def _jsonl_rows(path: Path, limit: int, encoding: str) -> Iterator[RawRow]:
    name = str(path)
    with path.open("rb") as f:
        for i, (offset, line, size) in enumerate(_lines(f, limit), start=1):
            if not line.strip():
                continue
            if size - line.endswith(b"\n") > limit:
                yield RawRow(name, i, None, _too_long(size, limit), line=i, reason="too_long",
                             text=line[:_PREVIEW].decode(encoding, "replace"))  # fmt: skip
                continue
            try:
                text = line.decode(encoding)
            except UnicodeDecodeError as exc:
                yield RawRow(name, i, None, _decode_error(exc, offset, encoding), line=i,
                             text=line.decode(encoding, "replace"))  # fmt: skip
                continue
            yield _json_row(name, i, text)


class _LineTooLong(Exception):
    """Raised through the CSV reader to end a record at a line over the size limit."""


def _csv_rows(path: Path, limit: int, encoding: str) -> Iterator[RawRow]:
    """CSV records (a quoted cell may span lines) checked against the header, size and bytes.

    A line over the limit ends its record there (as `too_long`): read on, its cut-off quote
    would swallow the rows after it.
    """
    name = str(path)
    # a cell may be as large as a row (the module's default, 128 KiB, would raise on one)
    csv.field_size_limit(max(csv.field_size_limit(), limit + 1))
    with path.open("rb") as f:
        taken: list[tuple[int, bytes, int]] = []  # the physical lines of the record being read
        lines = _lines(f, limit)

        def decoded() -> Iterator[str]:
            for item in lines:
                taken.append(item)
                if item[2] - item[1].endswith(b"\n") > limit:
                    raise _LineTooLong
                yield item[1].decode(encoding, "surrogateescape")

        reader = csv.reader(decoded())
        header = next(reader, None)
        if header is None:
            return
        line, row = 1 + len(taken), 0  # line: where the next record starts
        while True:
            taken.clear()
            error = None
            try:
                cells = next(reader)
            except StopIteration:
                return
            except _LineTooLong:
                cells, error = None, "too_long"
                reader = csv.reader(decoded())  # a fresh reader, from the next line on
            except csv.Error as exc:
                cells, error = None, str(exc)
            if cells == []:  # a blank line is no row
                line += len(taken)
                continue
            row += 1
            size = sum(t[2] for t in taken)
            text = b"".join(t[1] for t in taken)[:_PREVIEW].decode(encoding, "replace")
            if error == "too_long" or size > limit + len(taken):  # line ends do not count
                yield RawRow(name, row, None, _too_long(size, limit), line=line, text=text,
                             reason="too_long")  # fmt: skip
            elif error is not None or cells is None:
                yield RawRow(name, row, None, f"not valid CSV ({error})", line=line, text=text)
            elif any(_INVALID.search(c) for c in cells):
                yield RawRow(name, row, None, _first_decode_error(taken, encoding), line=line,
                             text=text)  # fmt: skip
            elif len(cells) > len(header):
                extra = len(cells) - len(header)
                yield RawRow(name, row, None, f"{len(cells)} cells for {len(header)} columns: "
                             f"{extra} cell(s) past the header", line=line, text=text)  # fmt: skip
            else:
                values = itertools.chain(cells, itertools.repeat(None))
                yield RawRow(name, row, dict(zip(header, values, strict=False)),
                             line=line)  # fmt: skip
            line += len(taken)


def _first_decode_error(taken: list[tuple[int, bytes, int]], encoding: str) -> str:
    for offset, line, _ in taken:
        try:
            line.decode(encoding)
        except UnicodeDecodeError as exc:
            return _decode_error(exc, offset, encoding)
    return f"not valid {encoding}"


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
    except RecursionError:
        return RawRow(source, row, None, "not valid JSON (nested too deeply)", line=row,
                      text=line[:_PREVIEW])  # fmt: skip
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


def _json_file_rows(
    path: Path, limit: int = MAX_ROW_BYTES, encoding: str = "utf-8"
) -> Iterator[RawRow]:
    """Rows of a .json file: the elements of a top-level array, streamed; or, when the file
    does not start with '[', JSON values one after another (JSON Lines saved as .json).

    Sizes here count characters (the file is decoded as it streams); an element over `limit`
    is skipped by a scanner that holds one chunk at a time.
    """
    name = str(path)
    decoder = json.JSONDecoder()
    utf8 = codecs.lookup(encoding).name == "utf-8"
    text_encoding = "utf-8-sig" if utf8 else encoding  # -sig: a byte-order mark is skipped
    with path.open(encoding=text_encoding, errors="surrogateescape") as f:
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

        def skip_element() -> tuple[int, str]:
            """Read past the element at `pos` without keeping it: (its size, its start)."""
            nonlocal buf, pos, line
            preview, size, depth, in_string, escaped = buf[pos : pos + _PREVIEW], 0, 0, False, False
            bracketed = buf[pos] in "{["
            while True:
                i = pos
                while i < len(buf):
                    ch = buf[i]
                    if in_string:
                        escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
                    elif ch == '"':
                        in_string = True
                    elif ch in "{[":
                        depth += 1
                    elif ch in "}]" or (not bracketed and ch in ",\n"):
                        depth -= ch in "}]"
                        if depth <= 0:
                            i += bracketed
                            line += buf.count("\n", pos, i)
                            size += i - pos
                            pos = i
                            return size, preview
                    i += 1
                line += buf.count("\n", pos, len(buf))
                size += len(buf) - pos
                pos = len(buf)
                fill()
                if eof:
                    return size, preview

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
            except (json.JSONDecodeError, RecursionError) as exc:
                end_or_none = _element_end(buf, pos)
                if end_or_none is None and not eof:
                    if len(buf) - pos <= limit:
                        fill()  # the element runs past the buffer: read on and try again
                        continue
                    size, preview = skip_element()
                    row += 1
                    yield RawRow(name, row, None, _too_long(size, limit), line=start_line,
                                 text=preview, reason="too_long")  # fmt: skip
                    continue
                end = len(buf) if end_or_none is None else end_or_none
                row += 1
                why = "nested too deeply" if isinstance(exc, RecursionError) else exc.msg
                yield RawRow(name, row, None, f"not valid JSON ({why})", line=start_line,
                             text=buf[start:end][:_PREVIEW])  # fmt: skip
                line += buf.count("\n", start, end)
                pos = end
                continue
            row += 1
            text = buf[start:end]
            bad = _INVALID.search(text)
            if end - start > limit:
                yield RawRow(name, row, None, _too_long(end - start, limit), line=start_line,
                             text=text[:_PREVIEW], reason="too_long")  # fmt: skip
            elif bad:
                offset = len(text[: bad.start()].encode(encoding, "surrogateescape"))
                byte = text[bad.start()].encode(encoding, "surrogateescape").hex()
                yield RawRow(name, row, None, f"not valid {encoding}: byte 0x{byte} at byte "
                             f"{offset} of the row", line=start_line,
                             text=text.encode(encoding, "surrogateescape").decode(
                                 encoding, "replace"))  # fmt: skip
            elif isinstance(value, dict):
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
    path: Path,
    fmt: str,
    origin: str,
    fields: Mapping[str, str] | None = None,
    max_row_bytes: int = MAX_ROW_BYTES,
    encoding: str = "utf-8",
) -> Iterator[Record | Rejected]:
    """Yield a record or a rejection for every row of one file, in file order.

    A file that cannot be read (or stops being readable) raises one `SourceError` naming it.
    """
    rows = read_rows(path, max_row_bytes, encoding)
    detected, n = None if fmt == "auto" else fmt, 0
    while True:
        try:
            raw = next(rows, None)
        except (OSError, ValueError, csv.Error, RecursionError) as exc:
            after = f" after row {n}" if n else ""
            raise SourceError(f"{path}: cannot read this file{after}: {_cause(exc)}") from None
        except Exception as exc:  # pyarrow's ArrowInvalid and kin: a file Arrow cannot read
            if type(exc).__module__.split(".")[0] != "pyarrow":
                raise
            raise SourceError(f"{path}: cannot read this file: {_cause(exc)}") from None
        if raw is None:
            return
        n += 1
        if raw.data is None:
            yield Rejected(raw.source, raw.row, "<row>", raw.error or "unreadable", raw.line,
                           raw.raw, raw.reason)  # fmt: skip
            continue
        row_fmt = detected or detect_format(raw.data, fields)
        if row_fmt is None:
            keys = ", ".join(sorted(map(str, raw.data))) or "none"
            yield Rejected(raw.source, raw.row, "<row>", f"unknown format (keys: {keys})",
                           raw.line, raw.raw)  # fmt: skip
            continue
        detected = detected or row_fmt  # the first readable row fixes the file's format
        try:
            messages = to_messages(raw.data, row_fmt, fields)
            _check_text(messages, max_row_bytes)
        except RowError as exc:
            reason = "too_long" if exc.field == "<size>" else "schema"
            yield Rejected(raw.source, raw.row, exc.field, str(exc), raw.line, _raw(raw), reason)
            continue
        except (ValueError, TypeError, RecursionError) as exc:  # an odd value, not a crash
            yield Rejected(raw.source, raw.row, "<row>", f"cannot convert: {_cause(exc)}",
                           raw.line, _raw(raw))  # fmt: skip
            continue
        row_origin = (
            raw.data.get("origin") if raw.data.get("origin") in ("human", "synthetic") else origin
        )
        yield Record(messages, row_origin, raw.source, raw.row, {"format": row_fmt, "raw": raw})


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _raw(raw: RawRow) -> str:
    """The raw text of a row, even one whose values JSON cannot write back."""
    try:
        return raw.raw
    except (ValueError, TypeError, RecursionError):
        return repr(raw.data)[:_PREVIEW]


def _check_text(messages: tuple[tuple[str, str], ...], limit: int) -> None:
    """Text a record can hold: no lone surrogates (a JSON `\\ud800` parses but is no text),
    and not over the row size limit (Parquet and Arrow rows arrive already parsed)."""
    size = 0
    for i, (_, content) in enumerate(messages):
        size += len(content)
        try:
            content.isascii() or content.encode("utf-8")  # isascii: a flag, no scan
        except UnicodeEncodeError as exc:
            raise RowError(f"messages[{i}].content",
                           f"unpaired surrogate at character {exc.start}") from None  # fmt: skip
    if size > limit:
        raise RowError("<size>", f"content is {size:,} characters, over data.max_row_bytes = "
                       f"{limit:,}")  # fmt: skip


def raw_text(record: Record) -> str | None:
    """The raw row a record came from (for rejected rows a data team will fix)."""
    raw = record.meta.get("raw")
    return raw.raw if isinstance(raw, RawRow) else None
