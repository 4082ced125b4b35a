"""Ingest: read raw files row by row and turn each row into a canonical record.

A row that does not parse or convert is not dropped and does not crash the run: it
becomes a rejected row (`schema`) whose detail names the file, the row and the field.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.records import ROLES, Record

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}  # fmt: skip


class RowError(ValueError):
    """A row that cannot become a record; `field` names the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class RawRow:
    """One row as read from a file (1-based row number: the line for JSONL)."""

    source: str
    row: int
    data: dict[str, Any] | None
    error: str | None = None


@dataclass(frozen=True)
class Rejected:
    """A row refused at ingest, with where and why."""

    source: str
    row: int
    field: str
    message: str

    @property
    def detail(self) -> str:
        return f"{self.source}:{self.row}: field '{self.field}': {self.message}"


def source_files(path: Path) -> list[Path]:
    """The data files of a source: the file itself, or a directory's files sorted by name."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES)
        if files:
            return files
        raise FileNotFoundError(f"{path}: no {'/'.join(FILE_SUFFIXES)} files in this directory")
    raise FileNotFoundError(f"{path}: no such file or directory")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_rows(path: Path) -> Iterator[RawRow]:
    """Stream rows from JSONL, JSON array, CSV or Parquet without loading the file twice."""
    name = str(path)
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                yield _json_row(name, i, line)
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
        for i, item in enumerate(data, start=1):
            if isinstance(item, dict):
                yield RawRow(name, i, item)
            else:
                yield RawRow(name, i, None, f"expected an object, got {type(item).__name__}")
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            for i, item in enumerate(csv.DictReader(f), start=1):
                yield RawRow(name, i, {k: v for k, v in item.items() if k is not None})
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for item in batch.to_pylist():
                i += 1
                yield RawRow(name, i, item)
    else:
        raise ValueError(f"{path}: unsupported file type (use {', '.join(FILE_SUFFIXES)})")


def _json_row(source: str, row: int, line: str) -> RawRow:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        return RawRow(source, row, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(data, dict):
        return RawRow(source, row, None, f"expected an object, got {type(data).__name__}")
    return RawRow(source, row, data)


def detect_format(data: dict[str, Any]) -> str | None:
    """Guess a row's format from its keys; None when nothing fits."""
    if "messages" in data:
        return "messages"
    if "conversations" in data:
        return "sharegpt"
    if "instruction" in data or "output" in data:
        return "alpaca"
    if "prompt" in data and "completion" in data:
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


def to_messages(data: dict[str, Any], fmt: str) -> tuple[tuple[str, str], ...]:
    """Convert one row of a known format to canonical (role, content) pairs."""
    if fmt == "alpaca":
        instruction = _text(data, "instruction")
        extra = _text(data, "input", required=False)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        turns: list[tuple[str, str]] = []
        if isinstance(data.get("system"), str) and data["system"].strip():
            turns.append(("system", data["system"]))
        for i, pair in enumerate(data.get("history") or []):
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                raise RowError(f"history[{i}]", "expected a [user, assistant] pair")
            turns += [("user", str(pair[0])), ("assistant", str(pair[1]))]
        return (*turns, ("user", prompt), ("assistant", _text(data, "output")))
    if fmt == "prompt_completion":
        return (("user", _text(data, "prompt")), ("assistant", _text(data, "completion")))
    if fmt in ("messages", "sharegpt"):
        key, role_key, content_key = (
            ("messages", "role", "content") if fmt == "messages" else ("conversations", "from", "value")
        )
        turns_raw = data.get(key)
        if not isinstance(turns_raw, list):
            raise RowError(key, "missing" if turns_raw is None else "expected a list of turns")
        out = []
        for i, turn in enumerate(turns_raw):
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
        return tuple(out)
    raise ValueError(f"unknown format {fmt!r}")


def ingest_file(path: Path, fmt: str, origin: str) -> Iterator[Record | Rejected]:
    """Yield a record or a rejection for every row of one file, in file order."""
    detected = None if fmt == "auto" else fmt
    for raw in read_rows(path):
        if raw.data is None:
            yield Rejected(raw.source, raw.row, "<row>", raw.error or "unreadable")
            continue
        row_fmt = detected or detect_format(raw.data)
        if row_fmt is None:
            keys = ", ".join(sorted(raw.data)) or "none"
            yield Rejected(raw.source, raw.row, "<row>", f"unknown format (keys: {keys})")
            continue
        detected = detected or row_fmt  # the first readable row fixes the file's format
        try:
            messages = to_messages(raw.data, row_fmt)
        except RowError as exc:
            yield Rejected(raw.source, raw.row, exc.field, str(exc))
            continue
        row_origin = raw.data.get("origin") if raw.data.get("origin") in ("human", "synthetic") else origin
        meta = {"format": row_fmt}
        yield Record(messages, row_origin, raw.source, raw.row, meta)
