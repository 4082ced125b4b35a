"""Export: LoRA merged into the de-quantized base, as safetensors and as GGUF (tiny Llama, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.config import TrainConfig
from tunegate.export import ExportError, merge_adapter
from tunegate.lineage import Lineage
from tunegate.train import load_base, train_adapter

PROMPTS = [
    [{"role": "user", "content": "My parcel #A12345 has not moved in a week."}],
    [{"role": "system", "content": "Answer with JSON."}, {"role": "user", "content": "Refund?"}],
    [{"role": "user", "content": "Change my address, please. Thanks, Sam"}],
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_base_model) -> Path:
    """A QLoRA adapter trained long enough on the tiny model to move its logits."""
    from test_train import make_train_config, write_snapshot_file

    tmp = tmp_path_factory.mktemp("export")
    config = make_train_config(tmp, max_steps=4, learning_rate=2e-2)
    return train_adapter(
        config, tiny_base_model, write_snapshot_file(tmp), tmp / "adapter"
    ).adapter_dir


def logits(model, tokenizer) -> list:
    import torch

    out = []
    with torch.no_grad():
        for messages in PROMPTS:
            ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            out.append(model(input_ids=ids).logits)
    return out


def test_merged_model_matches_base_plus_adapter(tmp_path, tiny_base_model, adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = merge_adapter(adapter, tiny_base_model.path, tmp_path / "merged")

    tokenizer = AutoTokenizer.from_pretrained(merged.path)
    standalone = AutoModelForCausalLM.from_pretrained(merged.path).eval()
    assert not any("lora" in name for name, _ in standalone.named_parameters())
    trained = PeftModel.from_pretrained(load_base(tiny_base_model, TrainConfig(), "cpu"), adapter)
    for got, want in zip(logits(standalone, tokenizer), logits(trained.eval(), tokenizer),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    plain_base = AutoModelForCausalLM.from_pretrained(tiny_base_model.path).eval()
    assert not torch.allclose(logits(plain_base, tokenizer)[0], logits(standalone, tokenizer)[0])
    info = json.loads((merged.path / "export.json").read_text())
    assert info["merged_sha256"] == merged.sha256 and info["base_dequantized_from"] == "nf4"


def test_export_command_finds_the_adapter_in_the_lineage_and_writes_gguf(
    tmp_path, tiny_base_model, adapter
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = json.loads((adapter / "manifest.json").read_text())
    workspace = tmp_path / "ws"
    lineage = Lineage(workspace / "lineage.duckdb")
    lineage.record_base_model(
        tiny_base_model.sha256, tiny_base_model.ref, str(tiny_base_model.path)
    )
    lineage.record_adapter(manifest["adapter_id"], "train-1", str(adapter),
                           tiny_base_model.sha256, "snap", manifest["config_hash"])  # fmt: skip

    merged_dir, gguf_file = tmp_path / "merged", tmp_path / "model.gguf"
    result = CliRunner().invoke(app, [
        "export", manifest["adapter_id"][:10], "--merged", str(merged_dir), "--gguf",
        str(gguf_file), "--gguf-type", "f32", "--workspace", str(workspace),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output

    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    from_gguf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_file.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf_file.name)
    for messages in PROMPTS:  # the GGUF carries the tokenizer and chat template too
        assert gguf_tokenizer.apply_chat_template(messages, add_generation_prompt=True) == (
            tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        )
    for got, want in zip(logits(from_gguf, tokenizer), logits(merged, tokenizer), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_export_refuses_a_base_the_adapter_was_not_trained_on(tmp_path, adapter):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-base"
    shape = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    LlamaForCausalLM(LlamaConfig(vocab_size=64, num_attention_heads=2, **shape)).save_pretrained(
        other
    )
    with pytest.raises(ExportError, match="the adapter was trained on"):
        merge_adapter(adapter, other, tmp_path / "merged")
