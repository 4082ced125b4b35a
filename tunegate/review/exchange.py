"""The offline review path: export the queue to CSV or JSONL, import the decisions back.

A reviewer fills `decision` (accept / reject), `reviewer` and optionally `note`, and may
rewrite `answer` (the last assistant turn): a changed answer is imported as an edit.
`messages` holds the whole conversation for context (JSON text in CSV).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegate.lineage import Lineage
from tunegate.review.triage import ReviewError, decide, review_item

COLUMNS = ["item_id", "run_id", "source", "source_row", "record_id", "flags", "scores",
           "messages", "answer", "decision", "reviewer", "note"]  # fmt: skip


@dataclass
class ImportSummary:
    applied: int = 0  # verdicts rewritten in their run
    kept: int = 0  # decisions on closed queues, kept for later runs
    blank: int = 0  # rows without a decision
    errors: list[str] = field(default_factory=list)


def _row(item: dict[str, Any]) -> dict[str, Any]:
    messages = json.loads(item["messages_json"] or "[]")
    answer = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
    return {"item_id": item["item_id"], "run_id": item["run_id"], "source": item["source"],
            "source_row": item["source_row"], "record_id": item["record_id"],
            "flags": ",".join(item["flags"]), "scores": item["scores"], "messages": messages,
            "answer": answer, "decision": "", "reviewer": "", "note": ""}  # fmt: skip


def export_queue(lineage: Lineage, path: Path, run_id: str | None = None) -> int:
    """Write the pending rows (of one run, or all) as CSV or JSONL, by the file's suffix."""
    rows = [_row(item) for item in lineage.review_items(run_id, "pending")]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            for row in rows:
                messages = json.dumps(row["messages"], ensure_ascii=False)
                writer.writerow({**row, "scores": json.dumps(row["scores"]), "messages": messages})
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise ReviewError(f"{path}: export to .csv or .jsonl")
    return len(rows)


def read_decisions(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    raise ReviewError(f"{path}: import from .csv or .jsonl")


def import_decisions(lineage: Lineage, path: Path, reviewer: str | None = None) -> ImportSummary:
    """Apply the decisions of an exported file; `reviewer` fills rows that name none."""
    summary = ImportSummary()
    for n, row in enumerate(read_decisions(path), start=1):
        decision = str(row.get("decision") or "").strip().lower()
        if not decision:
            summary.blank += 1
            continue
        who = str(row.get("reviewer") or reviewer or "").strip()
        where = f"{path.name} row {n} (item {row.get('item_id')})"
        try:
            if decision not in ("accept", "reject"):
                raise ReviewError(f"decision {decision!r} is not accept or reject")
            if not who:
                raise ReviewError("no reviewer (fill the column or pass --reviewer)")
            contents = _edited_contents(lineage, str(row["item_id"]), row.get("answer"))
            kind = "edit" if decision == "accept" and contents is not None else decision
            applied = decide(lineage, str(row["item_id"]), kind, who, str(row.get("note") or ""),
                             contents)  # fmt: skip
        except ReviewError as exc:
            summary.errors.append(f"{where}: {exc}")
            continue
        if applied:
            summary.applied += 1
        else:
            summary.kept += 1
    return summary


def _edited_contents(lineage: Lineage, item_id: str, answer: object) -> list[str] | None:
    """New message contents when the reviewer rewrote the answer, else None."""
    if answer is None:
        return None
    messages = json.loads(review_item(lineage, item_id)["messages_json"])
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    # Spreadsheets turn \n into \r\n: compare and store with the original line endings.
    answer = str(answer).replace("\r\n", "\n")
    if answer == messages[last]["content"]:
        return None
    return [answer if i == last else m["content"] for i, m in enumerate(messages)]
