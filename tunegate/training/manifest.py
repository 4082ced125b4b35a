"""`manifest.json`: what an adapter directory says about itself, next to its weights.

An adapter is trusted, compared and reproduced from this file alone: the hashes of its own
weights, of the base weights, of the snapshot and of the config, the seed, the metrics and
loss curve, and the library versions it was trained with.
"""

from __future__ import annotations

import importlib.metadata
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")
MANIFEST_KEYS = frozenset(
    {"adapter_id", "base_model", "snapshot_sha256", "config_hash", "seed", "steps", "device",
     "world_size", "quantization", "compute_dtype", "train", "lora", "validation_rows",
     "resumed_from_step", "metrics", "log_history", "versions", "created_at", "chat",
     "tokens"}
)  # fmt: skip


class ManifestError(RuntimeError):
    """An adapter directory without a readable manifest."""


def library_versions() -> dict[str, str]:
    """Versions that decide whether an adapter can be reproduced or even loaded."""
    return {name: importlib.metadata.version(name) for name in LIBRARIES}


def build_manifest(**fields: Any) -> dict[str, Any]:
    """The manifest of a finished run; every key of `MANIFEST_KEYS` must be given, no other."""
    fields.setdefault("versions", library_versions())
    fields.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds"))
    missing, unknown = MANIFEST_KEYS - set(fields), set(fields) - MANIFEST_KEYS
    if missing or unknown:
        raise ManifestError(f"manifest fields missing {sorted(missing)}, unknown {sorted(unknown)}")
    return fields


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: {exc}") from None
