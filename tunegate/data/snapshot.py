"""Curated snapshots: the exact, hashed set of records a training run reads."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tunegate.config import PipelineConfig
from tunegate.data.records import Record
from tunegate.lineage import Lineage


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    path: Path
    record_ids: tuple[str, ...]


def snapshot_id(record_ids: list[str]) -> str:
    """sha256 over the ordered record ids: same rows in the same order, same snapshot."""
    return hashlib.sha256("\n".join(record_ids).encode()).hexdigest()


def write_snapshot(records: list[Record], directory: Path) -> Snapshot:
    """Write the curated records as JSONL named by their hash (idempotent)."""
    ids = [r.record_id for r in records]
    sid = snapshot_id(ids)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{sid[:16]}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".partial")
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                row = {"record_id": r.record_id, "origin": r.origin, "messages": r.as_messages()}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.rename(path)
    return Snapshot(sid, path, tuple(ids))


def read_snapshot(path: Path) -> list[list[dict[str, str]]]:
    """The conversations of a snapshot file, in order."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def snapshot_records(
    config: PipelineConfig, lineage: Lineage, run_id: str, records: list[Record]
) -> Snapshot:
    snap = write_snapshot(records, config.workspace_dir / "snapshots")
    lineage.record_snapshot(snap.snapshot_id, run_id, str(snap.path), list(snap.record_ids))
    return snap
