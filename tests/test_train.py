"""QLoRA training on a tiny random Llama with the real SmolLM2 tokenizer (fast, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from tunegate.config import PipelineConfig, parse_config
from tunegate.models import BaseModel, sha256_dir
from tunegate.train import (
    MANIFEST_KEYS,
    TrainError,
    build_dataset,
    compute_dtype,
    load_base,
    tokenize_chat,
    train_adapter,
)

END = "<|im_end|>"

CHATS = [
    [
        {"role": "system", "content": "You triage support tickets. Answer with JSON."},
        {"role": "user", "content": "My invoice for March was charged twice."},
        {"role": "assistant", "content": '{"team": "billing", "priority": "high"}'},
    ],
    [
        {"role": "user", "content": "The app crashes when I upload a photo."},
        {"role": "assistant", "content": '{"team": "mobile", "priority": "medium"}'},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How do I reset my password?"},
        {"role": "assistant", "content": "Use the 'Forgot password' link on the login page."},
        {"role": "user", "content": "And if I no longer have that email?"},
        {"role": "assistant", "content": "Contact support with your account id."},
    ],
]


@pytest.fixture(scope="module")
def tokenizer(tiny_base_model: BaseModel):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base_model.path)


def labelled_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Runs of consecutive labelled tokens, one per assistant turn."""
    spans: list[list[int]] = []
    for i, (token, bit) in enumerate(zip(ids, mask, strict=True)):
        if bit and (i == 0 or not mask[i - 1]):
            spans.append([])
        if bit:
            spans[-1].append(token)
    return spans


@pytest.mark.parametrize("messages", CHATS, ids=["system", "default-system", "multi-turn"])
def test_mask_labels_exactly_the_assistant_turns(tokenizer, messages):
    chat = tokenize_chat(tokenizer, messages)

    rendered = tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert chat.input_ids == list(rendered)
    answers = [m["content"] + END for m in messages if m["role"] == "assistant"]
    spans = labelled_spans(chat.input_ids, chat.assistant_mask)
    assert [tokenizer.decode(s) for s in spans] == answers
    assert all(s[-1] == tokenizer.convert_tokens_to_ids(END) for s in spans)


def test_row_longer_than_max_length_stops_the_run(tokenizer):
    fits = len(tokenize_chat(tokenizer, CHATS[0]).input_ids)
    assert len(build_dataset(tokenizer, [CHATS[0]], max_length=fits)) == 1
    with pytest.raises(TrainError, match=rf"row 2: \d+ tokens > train.max_seq_length {fits}"):
        build_dataset(tokenizer, [CHATS[0], CHATS[2]], max_length=fits)


def test_conversation_without_assistant_turn_is_refused(tokenizer):
    with pytest.raises(TrainError, match=r"row 1: .*no assistant turn"):
        build_dataset(tokenizer, [CHATS[0][:2]], max_length=512)


def make_train_config(tmp_path: Path, **train: object) -> PipelineConfig:
    settings = {"max_steps": 3, "batch_size": 2, "logging_steps": 1, "learning_rate": 5e-3}
    settings.update(train)
    return parse_config(
        {
            "data": {"sources": [{"path": "unused.jsonl"}]},
            "lora": {"r": 4, "alpha": 8},
            "train": settings,
        },
        root=tmp_path,
    )


def write_snapshot_file(tmp_path: Path) -> Path:
    rows = [
        {"record_id": f"r{i}", "origin": "human", "messages": messages}
        for i, messages in enumerate(CHATS * 2)
    ]
    return write_jsonl(tmp_path / "snapshot.jsonl", rows)


def test_nf4_base_has_bitsandbytes_4bit_layers(tiny_base_model):
    import bitsandbytes as bnb

    model = load_base(tiny_base_model, "nf4", "cpu")
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert quantized[0].weight.quant_type == "nf4"


def test_qlora_training_saves_a_loadable_adapter_with_manifest(tmp_path, tiny_base_model):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    config = make_train_config(tmp_path)
    logs: list[dict[str, float]] = []
    out = tmp_path / "adapters" / "a1"
    result = train_adapter(
        config, tiny_base_model, write_snapshot_file(tmp_path), out,
        on_log=logs.append, manifest_extra={"snapshot_id": "abc"},
    )  # fmt: skip

    assert result.adapter_dir == out and result.steps == 3
    assert {"adapter_model.safetensors", "adapter_config.json", "manifest.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not any(p.is_dir() for p in out.iterdir())  # no checkpoints leak in
    assert result.adapter_id == sha256_dir(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["adapter_id"] == result.adapter_id
    assert manifest["config_hash"] == config.config_hash()
    assert manifest["base_model"] == {"ref": tiny_base_model.ref, "sha256": tiny_base_model.sha256}
    assert manifest["snapshot_id"] == "abc" and manifest["seed"] == 42
    assert set(manifest) - {"snapshot_id"} == MANIFEST_KEYS  # extras cannot shadow these
    assert set(manifest["versions"]) >= {"torch", "transformers", "peft", "trl", "bitsandbytes"}
    assert [e["step"] for e in logs] == [1, 2, 3]
    assert all({"loss", "learning_rate", "tokens_per_s"} <= set(e) for e in logs)
    for key in ("train_loss", "first_loss", "last_loss", "trained_tokens", "tokens_per_s"):
        assert result.metrics[key] > 0

    weights = load_file(out / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)  # it learned
    assert {t.dtype for t in weights.values()} == {compute_dtype("cpu")}
    base = AutoModelForCausalLM.from_pretrained(tiny_base_model.path)
    assert isinstance(PeftModel.from_pretrained(base, out), PeftModel)


def test_zero_learning_rate_leaves_the_adapter_a_no_op(tmp_path, tiny_base_model):
    from safetensors.torch import load_file

    config = make_train_config(tmp_path, learning_rate=0.0, max_steps=2)
    result = train_adapter(config, tiny_base_model, write_snapshot_file(tmp_path), tmp_path / "a0")

    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() == 0 for t in lora_b)


def test_non_empty_output_dir_is_refused_before_training(tmp_path, tiny_base_model):
    out = tmp_path / "a"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(TrainError, match="not empty"):
        train_adapter(make_train_config(tmp_path), tiny_base_model, tmp_path / "none.jsonl", out)


def test_manifest_extra_cannot_overwrite_recorded_fields(tmp_path, tiny_base_model):
    with pytest.raises(TrainError, match="adapter_id"):
        train_adapter(
            make_train_config(tmp_path), tiny_base_model, tmp_path / "none.jsonl",
            tmp_path / "a", manifest_extra={"adapter_id": "forged"},
        )  # fmt: skip
