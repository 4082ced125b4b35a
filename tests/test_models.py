"""Base-model preparation: races and tampering, and `base_model:` as a `.gguf` file
de-quantized once like the embedded model."""

from __future__ import annotations

import os
import threading

import pytest
from conftest import make_config

from tunegate.models import (
    MARKER,
    ModelError,
    _cached_sha,
    config_base_model,
    embedded_gguf,
    materialize_embedded,
    resolve_base_model,
)

pytestmark = pytest.mark.integration


def test_two_runs_preparing_the_embedded_model_at_once_make_it_once(tmp_path):
    target = tmp_path / "models" / "smollm2-135m-instruct"
    (target.parent / (target.name + ".partial-999999")).mkdir(parents=True)  # a killed run's
    target.mkdir()  # a copy without its marker: never completed
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            materialize_embedded(target)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # was: OSError: Directory not empty
    assert (target / MARKER).is_file() and list(target.glob("*.safetensors"))
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, target.name + ".lock"]


@pytest.mark.unit
def test_the_weights_hash_is_recomputed_when_bytes_change_under_the_same_size_and_mtime(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x00" * 4096)
    first = _cached_sha(tmp_path)
    assert _cached_sha(tmp_path) == first  # cached
    st = weights.stat()
    with weights.open("r+b") as f:  # flip bytes in place, same size
        f.seek(100)
        f.write(b"\xff\xff")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # and put the old mtime back
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    assert _cached_sha(tmp_path) != first


@pytest.mark.unit
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
