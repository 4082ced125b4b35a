"""Export: LoRA merged into the de-quantized base, as safetensors and as GGUF (tiny Llama, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.config import TrainConfig
from tunegate.lineage import Lineage
from tunegate.precision import ENV_CPU_BF16
from tunegate.release.export import ExportError, merge_adapter
from tunegate.training.train import load_base, train_adapter

PROMPTS = [
    [{"role": "user", "content": "My parcel #A12345 has not moved in a week."}],
    [{"role": "system", "content": "Answer with JSON."}, {"role": "user", "content": "Refund?"}],
    [{"role": "user", "content": "Change my address, please. Thanks, Sam"}],
]


pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]


# Largest logit difference between the merged model (fp32) and the NF4 base + adapter it came
# from when that runs in bf16: measured 0.0147 on an AMX CPU (issue 10) and 0.0145 with emulated
# bf16 on an AVX2 CPU; bf16 keeps 8 mantissa bits (relative error up to 2^-8 = 0.4%
# per rounding), so the bound is relative to the logits' scale.
BF16_MERGE_ATOL, BF16_MERGE_RTOL = 0.05, 0.02


def train_export_adapter(tmp: Path, tiny_base_model, dtype: str) -> Path:
    """A QLoRA adapter trained long enough on the tiny model to move its logits."""
    from test_train import make_train_config, write_snapshot_file

    config = make_train_config(tmp, max_steps=4, learning_rate=2e-2, compute_dtype=dtype)
    return train_adapter(
        config, tiny_base_model, write_snapshot_file(tmp), tmp / "adapter"
    ).adapter_dir


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_base_model) -> Path:
    """Trained in fp32, where the parity claims are tight on every CPU kind."""
    return train_export_adapter(tmp_path_factory.mktemp("export"), tiny_base_model, "float32")


@pytest.fixture(scope="module")
def bf16_adapter(tmp_path_factory, tiny_base_model) -> Path:
    """Trained in bf16 (emulated where the CPU has no bf16 instructions)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_CPU_BF16, "on")
        return train_export_adapter(tmp_path_factory.mktemp("export-bf16"), tiny_base_model,
                                    "bfloat16")  # fmt: skip


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
    """fp32: the merged model gives the NF4 base + adapter's logits within 1e-4, on any CPU.

    The reference runs in train mode (no dropout here, no gradients): in eval mode
    bitsandbytes repacks NF4 weights for its bf16 inference kernel on CPUs with AVX512-BF16,
    whatever the compute dtype (its `Linear4bit.forward`), which is not what training computed.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = merge_adapter(adapter, tiny_base_model.path, tmp_path / "merged")

    tokenizer = AutoTokenizer.from_pretrained(merged.path)
    standalone = AutoModelForCausalLM.from_pretrained(merged.path).eval()
    assert not any("lora" in name for name, _ in standalone.named_parameters())
    fp32 = TrainConfig(compute_dtype="float32")
    trained = PeftModel.from_pretrained(load_base(tiny_base_model, fp32, "cpu"), adapter).train()
    for got, want in zip(logits(standalone, tokenizer), logits(trained, tokenizer), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    plain_base = AutoModelForCausalLM.from_pretrained(tiny_base_model.path).eval()
    assert not torch.allclose(logits(plain_base, tokenizer)[0], logits(standalone, tokenizer)[0])
    info = json.loads((merged.path / "export.json").read_text())
    assert info["merged_sha256"] == merged.sha256 and info["base_dequantized_from"] == "nf4"


def test_merged_bf16_adapter_matches_base_plus_adapter_within_bf16_rounding(
    tmp_path, tiny_base_model, bf16_adapter, monkeypatch
):
    """bf16: the merged model (fp32 weights) against the NF4 base + adapter computing in bf16,
    in eval mode as a server would run it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv(ENV_CPU_BF16, "on")
    merged = merge_adapter(bf16_adapter, tiny_base_model.path, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(merged.path)
    standalone = AutoModelForCausalLM.from_pretrained(merged.path).eval()
    bf16 = TrainConfig(compute_dtype="bfloat16")
    trained = PeftModel.from_pretrained(load_base(tiny_base_model, bf16, "cpu"), bf16_adapter)
    for got, want in zip(logits(standalone, tokenizer), logits(trained.eval(), tokenizer),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(got, want.float(), atol=BF16_MERGE_ATOL, rtol=BF16_MERGE_RTOL)
    plain_base = AutoModelForCausalLM.from_pretrained(tiny_base_model.path).eval()
    assert not torch.allclose(logits(plain_base, tokenizer)[0], logits(standalone, tokenizer)[0])


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
