"""Base-model resolution: `base_model:` as a `.gguf` file is de-quantized once, like the
embedded model."""

from __future__ import annotations

import pytest
from conftest import make_config

from tunegate.models import (
    MARKER,
    ModelError,
    config_base_model,
    embedded_gguf,
    resolve_base_model,
)


def test_a_gguf_path_is_relative_to_the_config_and_a_bad_one_is_refused(tmp_path):
    cfg = make_config(tmp_path, [{"path": "x.jsonl"}], model={"base_model": "m/model.gguf"})
    assert config_base_model(cfg) == str(tmp_path / "m" / "model.gguf")
    with pytest.raises(ModelError, match="no such GGUF file"):
        resolve_base_model(config_base_model(cfg), tmp_path / "ws")
    junk = tmp_path / "m" / "model.gguf"
    junk.parent.mkdir()
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError, match="transformers cannot load this GGUF"):
        resolve_base_model(str(junk), tmp_path / "ws")


@pytest.mark.slow
def test_a_gguf_base_model_is_dequantized_once_into_the_workspace(tmp_path):
    """The embedded SmolLM2 GGUF given as a file: a safetensors directory, reused after."""
    gguf = embedded_gguf()
    base = resolve_base_model(str(gguf), tmp_path / "ws")
    assert base.path.parent == tmp_path / "ws" / "models"
    assert base.path.name.startswith(gguf.stem + "-")
    assert (base.path / MARKER).is_file() and (base.path / "tokenizer.json").is_file()
    stamp = (base.path / "model.safetensors").stat().st_mtime_ns
    again = resolve_base_model(str(gguf), tmp_path / "ws")
    assert again == base and (base.path / "model.safetensors").stat().st_mtime_ns == stamp
