"""The record contract: a pandera schema declared in `schemas/record_contract.yaml`.

The YAML is the one source of truth: a data team edits roles, content rules and which
conversation-level checks apply without touching Python. This module only registers the
conversation-level checks the YAML may name, turns a batch of records into the frame the
schema validates (one row per message), and turns pandera's failure cases back into one
readable detail per conversation. Validation is lazy, so a row lists every failure at once.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.extensions as extensions
import pandera.pandas as pa

from tunegate.config import PipelineConfig
from tunegate.curation.checks.base import Batch, CheckSetup, Finding
from tunegate.data.records import Record
from tunegate.data.verdicts import OTHER_REASONS

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONTRACT = REPO_ROOT / "schemas" / "record_contract.yaml"


def shipped_path(config: PipelineConfig, path: str) -> Path:
    """A path from the config; when nothing is there, the same path in the tunegate checkout
    (so a config anywhere uses the shipped `schemas/` unless it brings its own)."""
    p = config.resolve(path)
    return p if p.exists() or Path(path).is_absolute() else REPO_ROOT / path


# -- conversation-level checks the YAML can use (rows sorted by conversation, then turn) --------


def _last_turn(df: pd.DataFrame) -> pd.Series:
    return ~df["row"].duplicated(keep="last")


def _dialogue_index(df: pd.DataFrame) -> pd.Series:
    """Position of each message among its conversation's non-system messages (-1: system)."""
    dialogue = df["role"] != "system"
    return dialogue.groupby(df["row"]).cumsum().where(dialogue, 0) - 1


@extensions.register_check_method(statistics=["role"], check_type="vectorized")
def system_turn_first(df: pd.DataFrame, *, role: str) -> pd.Series:
    """A `role` message (the system prompt) may only open the conversation."""
    return (df["role"] != role) | (df["turn"] == 0)


@extensions.register_check_method(statistics=["first", "second"], check_type="vectorized")
def turns_alternate(df: pd.DataFrame, *, first: str, second: str) -> pd.Series:
    """Non-system messages go first, second, first, ...; only the first break is flagged."""
    k = _dialogue_index(df)
    expected = np.where(k % 2 == 0, first, second)
    bad = (k >= 0) & (df["role"] != expected)
    return ~(bad & (bad.groupby(df["row"]).cumsum() == 1))


@extensions.register_check_method(statistics=["role"], check_type="vectorized")
def last_turn_is(df: pd.DataFrame, *, role: str) -> pd.Series:
    """The last message of a conversation has this role (flagged on that message)."""
    return ~_last_turn(df) | (df["role"] == role)


@extensions.register_check_method(statistics=["min_turns"], check_type="vectorized")
def min_dialogue_turns(df: pd.DataFrame, *, min_turns: int) -> pd.Series:
    """At least `min_turns` non-system messages (flagged on the last message)."""
    n = (df["role"] != "system").groupby(df["row"]).transform("sum")
    return ~_last_turn(df) | (n >= min_turns)


# -- failure cases back to readable details --------------------------------------------------


def _describe(check: str, column: str | None, row: dict[str, Any], stats: dict[str, Any],
              value: object) -> str:  # fmt: skip
    """One failure as `messages[turn].field: reason`."""
    turn, role = int(row["turn"]), row["role"]
    if check == "turns_alternate":
        k = int(row["dialogue"])
        expected = stats["first"] if k % 2 == 0 else stats["second"]
        return f"messages[{turn}].role: expected {expected} (turns must alternate)"
    if check == "last_turn_is":
        return f"messages[{turn}].role: last turn must be {stats['role']}"
    if check == "system_turn_first":
        return f"messages[{turn}].role: {stats['role']} turn only allowed first"
    if check == "min_dialogue_turns":
        return (f"messages: {int(row['n_dialogue'])} user/assistant turn(s), "
                f"at least {stats['min_turns']} needed")  # fmt: skip
    if column == "content" and check in ("str_contains", "str_matches"):
        return f"messages[{turn}].content: empty ({role})"
    if column == "origin":
        return f"origin: {value!r} fails {check}"
    if column == "role" and check == "isin":
        return (
            f"messages[{turn}].role: {value!r} is not one of {', '.join(stats['allowed_values'])}"
        )
    where = f"messages[{turn}].{column}" if column else "conversation"
    return f"{where}: fails {check} (value {value!r})"


class RecordContract:
    """Rejects records that break the contract (`schema`), listing every failure of each."""

    reason = "schema"
    meaning = OTHER_REASONS["schema"]  # ingest rejects unparseable rows under the same code
    stage = "contract"
    order = 10
    needs_tokenizer = False

    @staticmethod
    def enabled(config: PipelineConfig) -> bool:
        return True  # the contract is what every later check relies on

    @classmethod
    def from_config(cls, config: PipelineConfig, setup: CheckSetup) -> RecordContract:
        return cls(shipped_path(config, config.contracts.record_schema))

    def __init__(self, path: Path | str = DEFAULT_CONTRACT):
        self.path = Path(path)
        try:
            self.schema = pa.DataFrameSchema.from_yaml(self.path)
        except Exception as exc:  # a bad contract file must say which file and why
            raise ValueError(f"record contract {self.path}: {exc}") from exc
        self._stats = {c.name: dict(c.statistics or {}) for c in self.schema.checks}
        for name, col in self.schema.columns.items():
            for c in col.checks:
                self._stats[f"{name}.{c.name}"] = dict(c.statistics or {})
                if c.name == "isin":
                    self._stats[f"{name}.{c.name}"]["allowed_values"] = [
                        str(v) for v in c.statistics.get("allowed_values", [])
                    ]

    @staticmethod
    def frame(records: Sequence[Record]) -> pd.DataFrame:
        """One row per message: conversation index, turn, role, content, origin."""
        counts = np.fromiter((len(r.messages) for r in records), np.int64, len(records))
        first = np.repeat(np.cumsum(counts) - counts, counts)
        return pd.DataFrame({
            "row": np.repeat(np.arange(len(records), dtype=np.int64), counts),
            "turn": np.arange(int(counts.sum()), dtype=np.int64) - first,
            "role": [role for r in records for role, _ in r.messages],
            "content": [content for r in records for _, content in r.messages],
            "origin": np.repeat(np.array([r.origin for r in records], dtype=object), counts),
        })  # fmt: skip

    def failures(self, records: Sequence[Record]) -> list[list[str]]:
        """Every contract failure of every record, in message order (empty list: valid)."""
        out: list[list[str]] = [[] for _ in records]
        for i, r in enumerate(records):
            if not r.messages:
                out[i].append("messages: no turns")
        df = self.frame(records)
        if df.empty:
            return out
        try:
            self.schema.validate(df, lazy=True)
            return out
        except pa.errors.SchemaErrors as exc:
            cases = exc.failure_cases
        cols = {
            "row": df["row"].to_numpy(), "turn": df["turn"].to_numpy(),
            "role": df["role"].to_numpy(dtype=object),
            "dialogue": _dialogue_index(df).to_numpy(),
            "n_dialogue": (df["role"] != "system").groupby(df["row"]).transform("sum").to_numpy(),
        }  # fmt: skip
        found: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
        seen: set[tuple[str, int]] = set()
        for case in cases.itertuples(index=False):
            name = re.match(r"\w+", str(case.check))
            check = name.group(0) if name else str(case.check)
            column = None if case.schema_context == "DataFrameSchema" else case.column
            stats = self._stats.get(f"{column}.{check}" if column else check, {})
            if case.index is None or pd.isna(case.index):  # a whole column fails (its dtype)
                for i in range(len(records)):
                    found[i].append((-1, 0, f"messages.{column}: {case.check} "
                                            f"(got {case.failure_case})"))  # fmt: skip
                continue
            idx = int(case.index)
            if (str(case.check), idx) in seen:  # frame checks repeat once per column
                continue
            seen.add((str(case.check), idx))
            row = {k: v[idx] for k, v in cols.items()}
            text = _describe(check, column, row, stats, case.failure_case)
            found[int(row["row"])].append((int(row["turn"]), int(case.check_number or 0), text))
        for i, items in found.items():
            ordered = (text for _, _, text in sorted(items, key=lambda t: (t[0], t[1])))
            out[i].extend(dict.fromkeys(ordered))  # one line per distinct failure
        return out

    def check_batch(self, batch: Batch, rows: Sequence[int]) -> dict[int, Finding]:
        records = [batch.records[i] for i in rows]
        return {
            i: Finding("; ".join(f)) for i, f in zip(rows, self.failures(records), strict=True) if f
        }


def contract_failures(record: Record, contract: RecordContract | None = None) -> list[str]:
    """All contract failures of one record as 'field: reason' strings (empty when valid)."""
    return (contract or _default()).failures([record])[0]


_DEFAULT: list[RecordContract] = []


def _default() -> RecordContract:
    if not _DEFAULT:
        _DEFAULT.append(RecordContract())
    return _DEFAULT[0]
