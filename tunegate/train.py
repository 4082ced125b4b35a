"""QLoRA training: a curated snapshot in, a LoRA adapter directory with a manifest out.

The recipe reads top to bottom in `train_adapter`:
  1. tokenize the snapshot with the base model's own chat template, labels on assistant turns only;
  2. load the base model (NF4 with double quantization for QLoRA, else plain weights);
  3. train with TRL's `SFTTrainer`, recording every logged loss and the measured tokens/s;
  4. save the adapter and tokenizer, hash the adapter weights, write `manifest.json`.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunegate.config import LoraConfig, PipelineConfig, TrainConfig
from tunegate.models import BaseModel, sha256_dir
from tunegate.snapshot import read_snapshot

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
    from trl import SFTConfig

    from datasets import Dataset

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")
# `constant` means constant after warmup here; transformers' plain `constant` ignores warmup.
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
MANIFEST_KEYS = frozenset(
    {"adapter_id", "base_model", "config_hash", "seed", "steps", "device", "quantization",
     "compute_dtype", "train", "lora", "metrics", "log_history", "versions", "created_at"}
)  # fmt: skip


class TrainError(RuntimeError):
    """The snapshot cannot be trained on as it is (too long, no assistant turn, odd template)."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced: the adapter directory, its id and how the run went."""

    adapter_dir: Path
    adapter_id: str
    steps: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class TokenizedChat:
    """One conversation as the model sees it; `assistant_mask` is 1 where the loss applies."""

    input_ids: list[int]
    assistant_mask: list[int]


# 1. Tokenize ------------------------------------------------------------------------------------


def render_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = False,
) -> list[int]:
    """Token ids of the chat template's rendering: exactly what inference will feed the model."""
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=False, add_generation_prompt=add_generation_prompt
    )
    return list(ids)


def _check_prefix(prefix: list[int], full: list[int], what: str) -> None:
    """Masks come from prefix lengths, so each prefix must tokenize as the start of the whole."""
    if full[: len(prefix)] != prefix:
        raise TrainError(
            f"{what} does not tokenize as a prefix of the full conversation; the chat template "
            "renders turns differently in context, so assistant tokens cannot be located"
        )


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> TokenizedChat:
    """Render a conversation and mark the tokens of its assistant turns.

    SmolLM2's template has no `{% generation %}` markers, so each assistant turn is located by
    rendering the conversation up to it twice: once ending in the generation prompt (what the
    model is given) and once including the turn (what it must produce). The tokens in between,
    cut after the end-of-turn token, are the answer plus `<|im_end|>`: the model learns to stop,
    while the newline the template adds after it stays unlabelled, as do system and user turns.
    """
    full = render_ids(tokenizer, messages)
    mask = [0] * len(full)
    end_id = tokenizer.eos_token_id
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
        turn = render_ids(tokenizer, messages[: i + 1])
        _check_prefix(prompt, full, f"the prompt before message {i}")
        _check_prefix(turn, full, f"the conversation up to message {i}")
        answer = turn[len(prompt) :]
        if end_id not in answer:
            raise TrainError(f"assistant message {i} renders without the end-of-turn token")
        stop = len(prompt) + len(answer) - answer[::-1].index(end_id)
        mask[len(prompt) : stop] = [1] * (stop - len(prompt))
    if not any(mask):
        raise TrainError("conversation has no assistant turn: nothing to learn from")
    return TokenizedChat(full, mask)


def build_dataset(
    tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]], max_length: int
) -> Dataset:
    """Pre-tokenized rows in the form TRL takes as is: `input_ids` + `assistant_masks`.

    A row longer than `max_length` is an upstream bug (curation measures lengths), so it stops the
    run here instead of being truncated: a cut row would teach answers without their end.
    """
    from datasets import Dataset

    rows = []
    for n, messages in enumerate(conversations, start=1):
        try:
            chat = tokenize_chat(tokenizer, messages)
        except TrainError as exc:
            raise TrainError(f"snapshot row {n}: {exc}") from None
        if len(chat.input_ids) > max_length:
            raise TrainError(
                f"snapshot row {n}: {len(chat.input_ids)} tokens > train.max_seq_length "
                f"{max_length}; curation should have rejected it (rows are never truncated)"
            )
        rows.append(chat)
    if not rows:
        raise TrainError("the snapshot holds no rows")
    return Dataset.from_dict(
        {
            "input_ids": [r.input_ids for r in rows],
            "assistant_masks": [r.assistant_mask for r in rows],
        }
    )


# 2. Load the base model -----------------------------------------------------------------------


def pick_device() -> str:
    """CUDA when there is one; the pipeline is built to run on a laptop CPU too."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: str) -> torch.dtype:
    """bf16 where the hardware runs it natively, else fp32.

    On a CPU without bf16 instructions (AVX2 only) oneDNN emulates bf16: a bf16 matmul measured
    40x slower than fp32 there, so "bf16 everywhere" would turn minutes into hours.
    """
    import torch

    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    has_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.bfloat16 if has_bf16 is not None and has_bf16() else torch.float32


def load_base(base: BaseModel, quantization: str, device: str) -> PreTrainedModel:
    """Load the base for training: NF4 + double quantization as in QLoRA, or plain weights."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device}
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(base.path, **kwargs)
    model.config.use_cache = False  # the KV cache only costs memory while training
    if quantization == "nf4":
        # Freezes the base, upcasts the small unquantized parts to fp32 for stable training.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=use_gradient_checkpointing(device)
        )
    return model


def use_gradient_checkpointing(device: str) -> bool:
    """Trade compute for memory only on GPUs: on CPU, RAM is plentiful and time is not."""
    return device == "cuda"


# 3. Train ---------------------------------------------------------------------------------------


def peft_lora_config(lora: LoraConfig) -> PeftLoraConfig:
    """The adapter shape from the config (`all-linear`: every linear layer but the LM head)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def sft_config(train: TrainConfig, work_dir: Path, device: str) -> SFTConfig:
    """TRL arguments from the config; nothing is saved by the trainer, we save the adapter."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(work_dir),
        learning_rate=train.learning_rate,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        # An int: transformers 5 dropped `warmup_ratio` and reads a float < 1 as a ratio.
        warmup_steps=math.ceil(train.max_steps * train.warmup_ratio),
        lr_scheduler_type=SCHEDULERS[train.lr_scheduler],
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        logging_first_step=True,  # the curve starts at the untrained loss
        max_length=train.max_seq_length,
        packing=False,  # pad to the longest row of each batch (the collator's default)
        activation_checkpointing=use_gradient_checkpointing(device),
        bf16=compute_dtype(device) == torch.bfloat16,
        use_cpu=device == "cpu",
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
    )


def make_log_recorder(
    on_log: Callable[[dict[str, float]], None] | None,
) -> tuple[TrainerCallback, list[dict[str, float]]]:
    """A callback that adds tokens/s to each step log, keeps the history and forwards it.

    It also logs the final step whatever `logging_steps` is, so `last_loss` and the trained
    token count describe the whole run.
    """
    from transformers import TrainerCallback

    history: list[dict[str, float]] = []

    class LogRecorder(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last = (time.perf_counter(), 0.0)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= state.max_steps:
                control.should_log = True  # the curve always ends at the final step

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any):
            if not logs or "loss" not in logs:  # the end-of-run summary is read from train()
                return
            now, tokens = time.perf_counter(), float(logs.get("num_tokens", 0.0))
            entry = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
            entry["step"] = float(state.global_step)
            entry["tokens_per_s"] = (tokens - self.last[1]) / max(now - self.last[0], 1e-9)
            self.last = (now, tokens)
            history.append(entry)
            if on_log is not None:
                on_log(dict(entry))

    return LogRecorder(), history


def match_trainable_dtype(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Keep the LoRA weights in fp32 when the compute is fp32.

    TRL casts adapters of a quantized model to bf16 (the QLoRA paper's choice); without native
    bf16 that puts every LoRA matmul on the slow emulated path, so they go back to fp32.
    """
    import torch

    if dtype != torch.float32:
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


def _check_labels(dataset: Dataset, n_rows: int, n_label_tokens: int) -> None:
    """Guard against a TRL change silently training on prompts or dropping rows."""
    labels = dataset["labels"] if "labels" in dataset.column_names else None
    found = sum(t != -100 for row in labels for t in row) if labels is not None else -1
    if len(dataset) != n_rows or found != n_label_tokens:
        raise TrainError(
            f"TRL prepared {len(dataset)} rows / {found} label tokens, expected "
            f"{n_rows} / {n_label_tokens}: the assistant mask was not applied as built"
        )


# 4. Save ----------------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    """Versions that decide whether an adapter can be reproduced or even loaded."""
    return {name: importlib.metadata.version(name) for name in LIBRARIES}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarize(
    history: list[dict[str, float]], summary: dict[str, float], steps: int
) -> dict[str, float]:
    """The run's numbers for gates and reports; tokens are non-padding input tokens."""
    trained_tokens = history[-1].get("num_tokens", 0.0) if history else 0.0
    runtime = float(summary.get("train_runtime", 0.0))
    return {
        "train_loss": float(summary.get("train_loss", math.nan)),
        "first_loss": history[0]["loss"] if history else math.nan,
        "last_loss": history[-1]["loss"] if history else math.nan,
        "train_runtime_s": runtime,
        "s_per_step": runtime / max(steps, 1),
        "trained_tokens": trained_tokens,
        "tokens_per_s": trained_tokens / runtime if runtime > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
    }


def build_manifest(
    config: PipelineConfig,
    base: BaseModel,
    adapter_id: str,
    steps: int,
    device: str,
    metrics: dict[str, float],
    history: list[dict[str, float]],
) -> dict[str, object]:
    """Everything needed to trust, compare or reproduce the adapter, next to its weights."""
    return {
        "adapter_id": adapter_id,
        "base_model": {"ref": base.ref, "sha256": base.sha256},
        "config_hash": config.config_hash(),
        "seed": config.train.seed,
        "steps": steps,
        "device": device,
        "quantization": config.train.quantization,
        "compute_dtype": str(compute_dtype(device)).removeprefix("torch."),
        "train": config.train.model_dump(mode="json"),
        "lora": config.lora.model_dump(mode="json"),
        "metrics": metrics,
        "log_history": history,
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_manifest(directory: Path, manifest: dict[str, object]) -> None:
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def check_output_dir(output_dir: Path) -> None:
    """Adapters are immutable: refuse a non-empty target before spending minutes on training."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise TrainError(f"{output_dir} already exists and is not empty; adapters are immutable")


def fresh_partial(output_dir: Path) -> Path:
    """A sibling work dir; renamed into place at the end so no half adapter is ever visible."""
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def train_adapter(
    config: PipelineConfig,
    base: BaseModel,
    snapshot_path: Path,
    output_dir: Path,
    on_log: Callable[[dict[str, float]], None] | None = None,
    manifest_extra: dict[str, object] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on a curated snapshot and save it with a manifest."""
    from transformers import AutoTokenizer, set_seed
    from trl import SFTTrainer

    train, device = config.train, pick_device()
    extra = dict(manifest_extra or {})
    clash = sorted(set(extra) & MANIFEST_KEYS)
    if clash:
        raise TrainError(f"manifest_extra would overwrite {clash}")
    check_output_dir(output_dir)

    # 1. tokenize: every row checked here, before minutes of model loading
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    dataset = build_dataset(tokenizer, read_snapshot(snapshot_path), train.max_seq_length)
    n_label_tokens = sum(sum(m) for m in dataset["assistant_masks"])

    # 2. load; the seed is set first so LoRA's random init is reproducible
    set_seed(train.seed)
    model = load_base(base, train.quantization, device)

    # 3. train in a scratch dir: TRL wants an output_dir, the adapter dir gets only the result
    recorder, history = make_log_recorder(on_log)
    with tempfile.TemporaryDirectory(prefix="tunegate-train-") as scratch:
        trainer = SFTTrainer(
            model=model,
            args=sft_config(train, Path(scratch), device),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_lora_config(config.lora),
            callbacks=[recorder],
        )
        _check_labels(trainer.train_dataset, len(dataset), n_label_tokens)
        match_trainable_dtype(trainer.model, compute_dtype(device))  # before the optimizer exists
        summary = trainer.train().metrics
    steps = trainer.state.global_step
    metrics = summarize(history, summary, steps)
    metrics.update(rows=float(len(dataset)), snapshot_label_tokens=float(n_label_tokens))
    log.info(
        "trained %d steps on %s (%s): %.0f tokens in %.1f s = %.0f tokens/s, loss %.3f -> %.3f",
        steps, device, train.quantization, metrics["trained_tokens"], metrics["train_runtime_s"],
        metrics["tokens_per_s"], metrics["first_loss"], metrics["last_loss"],
    )  # fmt: skip

    # 4. save: the id hashes the adapter weights only, so the manifest cannot change it
    partial = fresh_partial(output_dir)
    trainer.model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    adapter_id = sha256_dir(partial)
    manifest = build_manifest(config, base, adapter_id, steps, device, metrics, history)
    write_manifest(partial, {**manifest, **extra})
    if output_dir.exists():
        output_dir.rmdir()  # empty (checked above): a caller may create the dir beforehand
    partial.rename(output_dir)
    return TrainResult(output_dir, adapter_id, steps, metrics)
