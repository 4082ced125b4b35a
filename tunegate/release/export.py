"""Export an adapter as a standalone model: the LoRA merged into the de-quantized base.

The adapter learned against the base *as trained*: NF4 weights for QLoRA. The merge therefore
loads the base exactly as training did, de-quantizes it (transformers' `dequantize()`), and adds
the LoRA deltas in fp32 (`merge_and_unload`). The merged model computes what base + adapter
computed in training; it differs from the full-precision base by the NF4 rounding the adapter
was trained with. Special tokens the adapter added (its manifest's `tokens`) get rows first
(`fit_embeddings`); the merge writes their trained rows in.

Two formats:
- `merge_adapter`: a safetensors model directory with its tokenizer and the adapter's generation
  config (stop tokens = the trained end of turn), loadable by plain transformers (and vLLM,
  TGI, ...), with `export.json` naming what it was made from;
- `write_gguf`: that directory as one GGUF file (F32 or F16) for llama.cpp, written with the
  `gguf` package for Llama-architecture models with a byte-level BPE tokenizer (transformers
  reads GGUF but has no writer, and llama.cpp's converter is not a package).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunegate.models import sha256_dir
from tunegate.training.manifest import read_manifest
from tunegate.training.token_rows import fit_embeddings

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedModel

    from tunegate.lineage import Lineage

EXPORT_INFO = "export.json"
# Llama 3's pre-tokenizer regex (as JSON-escaped in tokenizer.json): llama.cpp calls it llama-bpe.
LLAMA3_SPLIT = json.dumps(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)[1:-1]
GGUF_TYPES = ("f32", "f16")


class ExportError(RuntimeError):
    """The adapter, its base or the target cannot be exported as asked."""


@dataclass(frozen=True)
class MergedModel:
    path: Path
    sha256: str  # of the merged weights, like adapter and base ids


def load_trained_base(base_dir: Path, quantization: str) -> PreTrainedModel:
    """The base as the adapter saw it in training, as plain fp32 `Linear` layers."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunegate.training.train import nf4_config

    if quantization == "none":
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, quantization_config=nf4_config(torch.float32), dtype=torch.float32,
        device_map="cpu",
    )  # fmt: skip
    return model.dequantize()


def merge_adapter(adapter_dir: Path, base_dir: Path, out_dir: Path) -> MergedModel:
    """Write base + adapter as one standalone safetensors model directory."""
    from peft import PeftModel
    from transformers import AutoTokenizer, GenerationConfig

    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} already exists and is not empty")
    manifest = read_manifest(adapter_dir)
    base_sha = sha256_dir(base_dir)
    if base_sha != manifest["base_model"]["sha256"]:
        raise ExportError(
            f"{base_dir} holds weights {base_sha[:12]}, the adapter was trained on "
            f"{manifest['base_model']['sha256'][:12]}"
        )
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    base = load_trained_base(base_dir, manifest["quantization"])
    fit_embeddings(base, len(tokenizer))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if (adapter_dir / "generation_config.json").is_file():  # stops at the trained end of turn
        GenerationConfig.from_pretrained(adapter_dir).save_pretrained(out_dir)
    sha = sha256_dir(out_dir)
    info = {"merged_sha256": sha, "adapter_id": manifest["adapter_id"],
            "base_model": manifest["base_model"], "base_dequantized_from": manifest["quantization"],
            "lora": manifest["lora"]}  # fmt: skip
    (out_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return MergedModel(out_dir, sha)


def export_adapter(
    lineage: Lineage, ref: str, merged_dir: Path, gguf_file: Path | None = None,
    gguf_type: str = "f16",
) -> tuple[MergedModel, Path | None]:  # fmt: skip
    """Look an adapter up in the lineage (a unique id prefix is enough), merge it, maybe GGUF.

    The adapter's files must still hash to its id, and its base is found under the base
    weights hash the lineage recorded, so the export is of exactly what was evaluated.
    """
    from tunegate.config import EMBEDDED_MODEL
    from tunegate.lineage import LineageError

    try:
        row = lineage.adapter(ref)
        base = lineage.base_model(row["base_model_sha256"])
    except LineageError as exc:
        raise ExportError(str(exc)) from None
    adapter_dir = Path(row["path"])
    if not adapter_dir.is_dir() or sha256_dir(adapter_dir) != row["adapter_id"]:
        raise ExportError(f"{adapter_dir} no longer holds adapter {row['adapter_id'][:12]}")
    merged = merge_adapter(adapter_dir, Path(base["path"]), merged_dir)
    if gguf_file is None:
        return merged, None
    pre = "smollm" if base["ref"] == EMBEDDED_MODEL else "default"
    return merged, write_gguf(merged.path, gguf_file, gguf_type, pre_tokenizer=pre)


# -- GGUF ----------------------------------------------------------------------------------------


def write_gguf(
    model_dir: Path, out_file: Path, out_type: str = "f16", pre_tokenizer: str = "default"
) -> Path:
    """Write a Llama-architecture HF model directory as one GGUF file llama.cpp loads.

    `pre_tokenizer` is llama.cpp's name for the regex split before BPE (`smollm` for the
    embedded model); `default` is its GPT-2 split.
    """
    import gguf
    import torch
    from safetensors.torch import load_file

    if out_type not in GGUF_TYPES:
        raise ExportError(f"GGUF type {out_type!r}: expected one of {GGUF_TYPES}")
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ExportError(f"GGUF export handles Llama models, not {config.get('model_type')!r}")
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(shard))

    writer = gguf.GGUFWriter(str(out_file), "llama")
    _write_llama_metadata(writer, config, out_type)
    _write_tokenizer(writer, model_dir, config, pre_tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    for name, tensor in weights.items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp reuses token_embd when `output` is absent
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ExportError(f"no GGUF name for tensor {name}")
        writer.add_tensor(target, _gguf_array(name, tensor, config, out_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def _write_llama_metadata(writer: Any, config: dict[str, Any], out_type: str) -> None:
    import gguf

    heads = config["num_attention_heads"]
    writer.add_name(config.get("_name_or_path") or "tunegate-merged")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_rope_dimension_count(config.get("head_dim") or config["hidden_size"] // heads)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    file_type = gguf.LlamaFileType.ALL_F32 if out_type == "f32" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(file_type)


def _write_tokenizer(
    writer: Any, model_dir: Path, config: dict[str, Any], pre_tokenizer: str
) -> None:
    """Byte-level BPE vocabulary, merges, special tokens and chat template from tokenizer.json."""
    import gguf

    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    model = tokenizer["model"]
    if model.get("type") != "BPE" or tokenizer.get("decoder", {}).get("type") != "ByteLevel":
        raise ExportError("GGUF export handles byte-level BPE tokenizers only")
    if pre_tokenizer == "default" and LLAMA3_SPLIT in json.dumps(tokenizer.get("pre_tokenizer")):
        pre_tokenizer = "llama-bpe"  # Llama 3's split: GPT-2's would tokenize differently
    by_id = {i: t for t, i in model["vocab"].items()}
    control = {t["id"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    for added in tokenizer.get("added_tokens", []):
        by_id.setdefault(added["id"], added["content"])
    size = max(config["vocab_size"], len(by_id))
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [gguf.TokenType.CONTROL if i in control else
             gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED
             for i in range(size)]  # fmt: skip
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_add_space_prefix(False)
    # merges, bos/eos/pad ids, add_bos and the chat template, as llama.cpp's converter reads them
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=size).add_to_gguf(writer, quiet=True)


def _gguf_array(name: str, tensor: Any, config: dict[str, Any], out_type: str) -> np.ndarray:
    """One tensor in GGUF layout: q/k rows permuted back to llama.cpp's rotary order."""
    import numpy as np

    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    array = tensor.float().numpy()
    if name.endswith("self_attn.q_proj.weight"):
        array = _permute(array, heads)
    elif name.endswith("self_attn.k_proj.weight"):
        array = _permute(array, kv_heads)
    # 1-D tensors (norms) stay F32, as llama.cpp's converter keeps them
    dtype = np.float16 if out_type == "f16" and array.ndim > 1 else np.float32
    return np.ascontiguousarray(array.astype(dtype))


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (halves) to llama.cpp's (interleaved pairs); transformers undoes it."""
    pairs = weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
    return pairs.swapaxes(1, 2).reshape(weights.shape)
