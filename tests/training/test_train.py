"""QLoRA training on a tiny random Llama with the real SmolLM2 tokenizer (fast, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE
from unittest import mock

import pytest
from conftest import REPO, write_jsonl

from tunegate.chat import tokenize_chat
from tunegate.config import PipelineConfig, TrainConfig, parse_config
from tunegate.hashing import sha256_file
from tunegate.models import sha256_dir
from tunegate.precision import dtype_name, resolve_dtype
from tunegate.training.checkpoints import last_complete_checkpoint, remove_incomplete
from tunegate.training.manifest import MANIFEST_KEYS
from tunegate.training.train import (
    TrainError,
    build_dataset,
    find_resume_point,
    load_base,
    process_state,
    score_label_positions_only,
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


pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]


def labelled_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Runs of consecutive labelled tokens, one per assistant turn."""
    spans: list[list[int]] = []
    for i, (token, bit) in enumerate(zip(ids, mask, strict=True)):
        if bit and (i == 0 or not mask[i - 1]):
            spans.append([])
        if bit:
            spans[-1].append(token)
    return spans


@pytest.mark.unit
@pytest.mark.parametrize("messages", CHATS, ids=["system", "default-system", "multi-turn"])
def test_mask_labels_exactly_the_assistant_turns(tokenizer, messages):
    chat = tokenize_chat(tokenizer, messages)

    rendered = tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert chat.input_ids == list(rendered)
    answers = [m["content"] + END for m in messages if m["role"] == "assistant"]
    spans = labelled_spans(chat.input_ids, chat.assistant_mask)
    assert [tokenizer.decode(s) for s in spans] == answers
    assert all(s[-1] == tokenizer.convert_tokens_to_ids(END) for s in spans)


@pytest.mark.unit
def test_row_longer_than_max_length_stops_the_run(tokenizer):
    fits = len(tokenize_chat(tokenizer, CHATS[0]).input_ids)
    assert len(build_dataset(tokenizer, [CHATS[0]], max_length=fits)) == 1
    with pytest.raises(TrainError, match=rf"row 2: \d+ tokens > train.max_seq_length {fits}"):
        build_dataset(tokenizer, [CHATS[0], CHATS[2]], max_length=fits)


@pytest.mark.unit
def test_conversation_without_assistant_turn_is_refused(tokenizer):
    with pytest.raises(TrainError, match=r"row 1: .*no assistant turn"):
        build_dataset(tokenizer, [CHATS[0][:2]], max_length=512)


def make_train_config(tmp_path: Path, lora: dict | None = None, **train: object) -> PipelineConfig:
    settings = {"max_steps": 3, "batch_size": 2, "logging_steps": 1, "learning_rate": 5e-3,
                "validation_fraction": 0.0, "checkpoint_steps": 0}  # fmt: skip
    settings.update(train)
    return parse_config(
        {
            "workspace": str(tmp_path / "ws"),
            "data": {"sources": [{"path": "unused.jsonl"}]},
            "lora": {"r": 4, "alpha": 8, **(lora or {})},
            "train": settings,
        },
        root=tmp_path,
    )


def write_snapshot_file(tmp_path: Path, copies: int = 2) -> Path:
    rows = [
        {"record_id": f"r{i}", "origin": "human", "messages": messages}
        for i, messages in enumerate(CHATS * copies)
    ]
    return write_jsonl(tmp_path / "snapshot.jsonl", rows)


def test_nf4_base_has_bitsandbytes_4bit_layers(tiny_base_model):
    import bitsandbytes as bnb

    model = load_base(tiny_base_model, TrainConfig(), "cpu")
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert quantized[0].weight.quant_type == "nf4"
    assert quantized[0].weight.quant_state.nested  # double quantization


def test_qlora_training_saves_a_loadable_adapter_with_manifest(
    tmp_path, tiny_base_model, capsys, cpu_bf16
):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = make_train_config(tmp_path, validation_fraction=0.25, eval_steps=1)
    logs: list[dict[str, float]] = []
    out = tmp_path / "adapters" / "a1"
    snapshot = write_snapshot_file(tmp_path)
    result = train_adapter(
        config, tiny_base_model, snapshot, out,
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
    assert manifest["snapshot_sha256"] == sha256_file(snapshot)
    assert manifest["snapshot_id"] == "abc" and manifest["seed"] == 42
    assert set(manifest) - {"snapshot_id"} == MANIFEST_KEYS  # extras cannot shadow these
    assert set(manifest["versions"]) >= {"torch", "transformers", "peft", "trl", "bitsandbytes"}
    assert manifest["validation_rows"] == 1 and result.metrics["rows"] == 5

    train_logs = [e for e in logs if "loss" in e]
    assert [e["step"] for e in train_logs] == [1, 2, 3]
    assert all({"loss", "learning_rate", "tokens_per_s"} <= set(e) for e in train_logs)
    assert [e["step"] for e in logs if "eval_loss" in e] == [1, 2, 3]  # eval every step here
    assert [e["step"] for e in manifest["log_history"] if "eval_loss" in e] == [1, 2, 3]
    for key in ("train_loss", "first_loss", "last_loss", "last_eval_loss", "trained_tokens",
                "tokens_per_s"):  # fmt: skip
        assert result.metrics[key] > 0
    assert "tok/s" in capsys.readouterr().err  # the console bar shows the token rate

    weights = load_file(out / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)  # it learned
    # `auto`: fp32 without native bf16 (LoRA kept fp32), bf16 with it (TRL's QLoRA cast)
    dtype = resolve_dtype("auto", "cpu")
    assert dtype == (torch.bfloat16 if cpu_bf16 == "on" else torch.float32)
    assert {t.dtype for t in weights.values()} == {dtype}
    assert manifest["compute_dtype"] == dtype_name(dtype)

    # a plain PeftModel on the plain base loads it and generates with it
    base = AutoModelForCausalLM.from_pretrained(tiny_base_model.path)
    prompt = AutoTokenizer.from_pretrained(out).apply_chat_template(
        CHATS[1][:1], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        base_logits = base(**prompt).logits
        model = PeftModel.from_pretrained(base, out).eval()
        tuned_logits = model(**prompt).logits
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4
    assert not torch.allclose(base_logits, tuned_logits)


def test_same_config_and_data_give_the_same_adapter(tmp_path, tiny_base_model, cpu_bf16):
    """Bitwise, in either dtype: the same machine runs the same kernels in the same order."""
    config = make_train_config(tmp_path, lora={"dropout": 0.1})  # dropout draws random numbers
    snapshot = write_snapshot_file(tmp_path)
    first = train_adapter(config, tiny_base_model, snapshot, tmp_path / "a")
    second = train_adapter(config, tiny_base_model, snapshot, tmp_path / "b")
    assert first.adapter_id == second.adapter_id

    reseeded = make_train_config(tmp_path / "other", lora={"dropout": 0.1}, seed=7)
    assert train_adapter(reseeded, tiny_base_model, snapshot, tmp_path / "c").adapter_id != (
        first.adapter_id
    )


def test_padding_free_batches_keep_rows_apart(tokenizer, tiny_base_model):
    """The flattened micro-batch gives each row exactly the logits it gets alone."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_base_model.path).eval()
    rows = [tokenize_chat(tokenizer, m).input_ids for m in CHATS[:2]]
    collate = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=True)
    batch = collate([{"input_ids": r} for r in rows])
    assert batch["input_ids"].shape == (1, sum(map(len, rows))) and "attention_mask" not in batch
    with torch.no_grad():  # use_cache=False as in training: a cache disables the packed mask
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits[0]  # fmt: skip
        alone = [model(input_ids=torch.tensor([r]), use_cache=False).logits[0] for r in rows]
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_label_only_head_gives_the_same_loss_and_gradients(tokenizer, tiny_base_model):
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    chat = tokenize_chat(tokenizer, CHATS[2])
    ids = torch.tensor([chat.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(chat.input_ids, chat.assistant_mask,
                                                             strict=True)]])  # fmt: skip

    projected: list[int] = []  # rows the head projects, per call

    def loss_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        model = AutoModelForCausalLM.from_pretrained(tiny_base_model.path)
        add_fused_lm_head(model)
        head = trl_utils._ChunkedLogProbFunction.apply

        def counted(hidden: torch.Tensor, *args: object) -> object:
            projected.append(len(hidden))
            return head(hidden, *args)

        with mock.patch.object(trl_utils._ChunkedLogProbFunction, "apply", counted):
            loss = model(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False).loss
        loss.backward()
        return loss.detach(), model.get_output_embeddings().weight.grad

    every_position = loss_and_grad()
    with score_label_positions_only():
        label_positions = loss_and_grad()
    torch.testing.assert_close(label_positions, every_position, atol=1e-6, rtol=1e-5)
    assert projected == [len(chat.input_ids) - 1, sum(chat.assistant_mask)]


def test_rslora_and_dora_switches_reach_the_adapter(tmp_path, tiny_base_model):
    config = make_train_config(tmp_path, lora={"use_rslora": True, "use_dora": True}, max_steps=1)
    result = train_adapter(config, tiny_base_model, write_snapshot_file(tmp_path), tmp_path / "a")
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["use_rslora"] is True and adapter_config["use_dora"] is True


@pytest.mark.unit
def test_half_written_checkpoints_are_never_resumed_from(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        if complete:
            (path / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert remove_incomplete(tmp_path) == [tmp_path / "checkpoint-6"]
    assert last_complete_checkpoint(tmp_path / "missing") is None

    assert find_resume_point(tmp_path, True, process_state()) == tmp_path / "checkpoint-4"
    assert find_resume_point(tmp_path, False, process_state()) is None  # resume off: afresh
    assert not list(tmp_path.iterdir())


TRAIN_JOB = """
import json, sys, time
from pathlib import Path
from tunegate.config import parse_config
from tunegate.models import BaseModel
from tunegate.training.train import train_adapter

spec = json.loads(sys.argv[1])
model = Path(spec["model"])
base = BaseModel(ref=str(model), path=model, sha256=spec["model_sha"])
config = parse_config(spec["config"], root=Path(spec["root"]))
pause = spec["pause_s"]  # slows each step so the parent can kill it mid-run
result = train_adapter(config, base, Path(spec["snapshot"]), Path(spec["out"]),
                       on_log=lambda entry: time.sleep(pause))
print(json.dumps({"steps": result.steps, "adapter_id": result.adapter_id}))
"""


# Largest relative loss difference per logged step between a resumed and an uninterrupted bf16
# run. Measured 2.4e-4 absolute on losses ~10.8 (2e-5 relative) with emulated bf16 (AVX2 CPU,
# TUNEGATE_CPU_BF16=on), where, as on an AMX CPU, the resumed weights differ from the
# uninterrupted ones in their last bits: bf16 promises the curve, not the bits.
BF16_RESUME_LOSS_RTOL = 1e-3


@pytest.mark.parametrize(("dtype", "cpu_bf16"), [("float32", "off"), ("bfloat16", "on")],
                         indirect=["cpu_bf16"])  # fmt: skip
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_base_model, dtype, cpu_bf16):
    """SIGKILL mid-run, start again: it resumes and ends at max_steps on the same data order.

    fp32: the same weights, bit for bit. bf16: the same steps, the same rows in every step (same
    tokens seen) and the same loss curve within BF16_RESUME_LOSS_RTOL (README, "Training").
    """
    train = {"max_steps": 12, "batch_size": 1, "gradient_accumulation_steps": 2,
             "checkpoint_steps": 2, "compute_dtype": dtype}  # fmt: skip
    config = make_train_config(tmp_path, lora={"dropout": 0.1}, **train)
    snapshot = write_snapshot_file(tmp_path)
    reference = train_adapter(
        make_train_config(tmp_path / "ref", lora={"dropout": 0.1}, **train),
        tiny_base_model, snapshot, tmp_path / "reference",
    )  # fmt: skip

    def start(pause_s: float) -> subprocess.Popen[str]:
        spec = {
            "model": str(tiny_base_model.path),
            "model_sha": tiny_base_model.sha256,
            "config": config.model_dump(mode="json"),
            "root": str(tmp_path),
            "snapshot": str(snapshot),
            "out": str(tmp_path / "adapter"),
            "pause_s": pause_s,
        }
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-c", TRAIN_JOB, json.dumps(spec)]
        return subprocess.Popen(command, env=env, stdout=PIPE, stderr=PIPE, text=True)

    first = start(pause_s=0.3)
    state = tmp_path / "ws" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(state.glob("*/checkpoint-4/trainer_state.json")):
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint-4 within 120 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "adapter").exists()

    second = start(pause_s=0.0)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr[-3000:]
    done = json.loads(stdout.strip().splitlines()[-1])
    manifest = json.loads((tmp_path / "adapter" / "manifest.json").read_text())
    assert manifest["compute_dtype"] == dtype
    assert done["steps"] == manifest["steps"] == 12
    assert manifest["resumed_from_step"] in (4, 6)
    resumed = [e for e in manifest["log_history"] if "loss" in e]
    uninterrupted = [e for e in json.loads((reference.adapter_dir / "manifest.json").read_text())
                     ["log_history"] if "loss" in e]  # fmt: skip
    assert [e["step"] for e in resumed] == [e["step"] for e in uninterrupted] == list(range(1, 13))
    # same rows in every step: the token count seen after each step matches
    seen = [e["num_input_tokens_seen"] for e in resumed]
    assert seen == [e["num_input_tokens_seen"] for e in uninterrupted]
    if dtype == "float32":
        assert done["adapter_id"] == reference.adapter_id  # same RNG, same weights
    else:
        gaps = [abs(a["loss"] - b["loss"]) / b["loss"]
                for a, b in zip(resumed, uninterrupted, strict=True)]  # fmt: skip
        assert max(gaps) <= BF16_RESUME_LOSS_RTOL, gaps
    assert not list(state.iterdir())  # checkpoints are removed once the adapter is saved


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
