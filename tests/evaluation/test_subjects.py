"""One model that is, in turn, the base and the merged adapter: each subject's logits are bit
for bit those of the model `load_model` loads for it, whichever way and however often the
weights are switched."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunegate.evaluation.evaluate import load_model
from tunegate.evaluation.subjects import load_subjects
from tunegate.models import BaseModel

pytestmark = pytest.mark.unit


def random_adapter(base: BaseModel, out: Path) -> Path:
    """A LoRA on every linear layer with random A and B, plus two trained token rows (the
    tied embedding / LM head, as `model.add_missing_tokens` trains them)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base.path)
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False,
                        trainable_token_indices=[3, 5])  # fmt: skip
    peft_model = get_peft_model(model, config)
    for name, p in peft_model.named_parameters():
        if "trainable_tokens_delta" in name:
            p.data += torch.randn_like(p)
    peft_model.save_pretrained(out)
    return out


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


def test_each_subject_computes_exactly_what_its_own_model_computes(tiny_base_model, tmp_path):
    import torch

    adapter_dir = random_adapter(tiny_base_model, tmp_path / "adapter")
    ids = torch.tensor([[1, 3, 5, 42, 7, 3, 99, 5]])
    base_model, _ = load_model(tiny_base_model.path, None, "float32")
    merged_model, _ = load_model(tiny_base_model.path, adapter_dir, "float32")
    want = {"base": logits(base_model, ids), "adapter": logits(merged_model, ids)}
    assert not torch.equal(want["base"], want["adapter"])  # the adapter changes the model

    subjects = load_subjects(tiny_base_model.path, adapter_dir, "float32")
    for subject in ("adapter", "base", "adapter", "base", "base", "adapter"):
        assert torch.equal(logits(subjects.use(subject), ids), want[subject]), subject
    # Only the weights under adapter layers have a second copy: the embedding (tied LM head)
    # and the linear layers, not the norms.
    swapped = set(subjects._versions["base"])
    assert "model.embed_tokens.weight" in swapped
    assert not any("norm" in name for name in swapped)
