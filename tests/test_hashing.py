"""The recorded digests never change: source hashes, weights ids and the files a gate judged.

The expected values were computed by the three hashers these replaced (`ingest.file_sha256`,
`models.sha256_dir`, `registry.files_digest`) on the same sample folder, so workspaces recorded
before still match.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunegate.hashing import sha256_file, sha256_source
from tunegate.models import ModelError, sha256_dir
from tunegate.release.registry import files_digest

pytestmark = pytest.mark.unit


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """Weights, config, a subfolder, a hidden file and a manifest: every rule has a case."""
    root = tmp_path / "s"
    (root / "sub").mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 5000)  # > one block
    (root / "extra.bin").write_bytes(b"\x00\x01" * 3)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "sub" / "tokenizer.json").write_text("{}")
    (root / ".hidden").write_text("x")
    manifest = {"adapter_id": "abc", "steps": 3, "lora": {"r": 8}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_file_and_source_digests_are_the_recorded_ones(sample: Path):
    weights = sample / "adapter_model.safetensors"
    assert sha256_file(weights) == (
        "7d471e4af16db5a30ce10aebbc29f5178b2edbad6c7dc2e8ff8ee6e4848a726f"
    )
    assert sha256_source(sample / "extra.bin") == (
        "7b9453f4b6c2ef939d3959400b0ef356025da295b5402bab5e3ec0312f166c52"
    )
    assert sha256_source(sample) == (
        "391e9a364adaf17371336d96262dfa06dbd2845c94914f7fc944c896ea2713af"
    )


def test_weights_ids_are_the_recorded_ones(sample: Path):
    assert sha256_dir(sample) == "0a4ec452e1a5fe8c28dbc6e5f88cfd6e5c48fdc1ea0d8dcec56442110795270a"
    assert sha256_dir(sample, ("*.json",)) == (
        "085b197a85c17d3a827bfa25edba699dd37c8f82c9f18c86dcf512e0d22ef30e"
    )
    with pytest.raises(ModelError, match="no weight files"):
        sha256_dir(sample / "sub")


def test_files_digest_is_the_recorded_one(sample: Path):
    assert files_digest(sample) == (
        "6989a01a03c7267cc7d3f27642c8a24e772ad5c86b188b2941ca5ce2185c72fb"
    )
    (sample / "manifest.json").unlink()  # hashed as missing
    assert files_digest(sample) == (
        "c9ea8e926bdcc839ebcc7672d5b023f5b68ea576b6b74d73c4695e08caeda734"
    )
