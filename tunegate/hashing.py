"""sha256 of files and folders: the one place that turns bytes into the ids lineage records.

Source files, base model weights, adapter ids and the files a gate judged are all recorded by
these digests in lineage files that outlive a release, so a recipe never changes once used:
the folder recipes differ (which files count, raw bytes or per-file digests) because each was
recorded that way, and `sha256_tree` is the one implementation they share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

CHUNK = 1 << 20  # bytes read at a time: weight files are gigabytes


def sha256_file(path: Path) -> str:
    """sha256 of one file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_tree(
    root: Path,
    files: Iterable[Path],
    *,
    name_end: bytes = b"\0",
    contents: Literal["digest", "bytes"] = "digest",
    trailer: bytes = b"",
) -> str:
    """sha256 over `files` under `root`, sorted: per file its path relative to `root`, then
    `name_end`, then its hex sha256 (`contents="digest"`) or its raw bytes (`"bytes"`);
    `trailer` last.

    The parameters only reproduce recorded recipes: weights ids use no `name_end` (names of
    top-level files), source files hash raw bytes. New digests should keep the defaults, where
    the NUL ends the name and a fixed-length digest ends the contents, so no two folders
    collide.
    """
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + name_end)
        if contents == "digest":
            h.update(sha256_file(f).encode())
            continue
        with f.open("rb") as stream:
            while block := stream.read(CHUNK):
                h.update(block)
    h.update(trailer)
    return h.hexdigest()


def sha256_source(path: Path) -> str:
    """sha256 of a data source: a file's bytes, or every file of a folder (a saved HF dataset,
    a folder of shards), hidden ones included, by relative name and raw bytes."""
    if not path.is_dir():
        return sha256_file(path)
    return sha256_tree(path, (p for p in path.rglob("*") if p.is_file()), contents="bytes")
