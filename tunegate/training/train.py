"""QLoRA training: a curated snapshot in, a LoRA adapter directory with a manifest out.

The recipe reads top to bottom in `train_adapter`:
  1. tokenize the snapshot with the configured chat template (`tunegate.chat`), labels on
     assistant turns and their end-of-turn token only, and set a seeded validation split aside;
  2. load the base model (NF4 with double quantization for QLoRA, else plain weights), with a
     row for every token of the tokenizer (`token_rows`: markers added by the template);
  3. train LoRA (and the rows of added or untrained markers) with TRL's `SFTTrainer`:
     padding-free micro-batches, loss only where there are labels, eval loss every N steps, a
     checkpoint every N steps in the workspace, and a resume from the last complete one when
     the same job was killed before;
  4. save the adapter and tokenizer, hash the adapter weights, write `manifest.json`.

It runs as one process or as several under `accelerate launch` (DDP); every process trains,
the main one saves.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunegate.chat import (
    ChatError,
    EndOfTurn,
    chat_summary,
    end_of_turn,
    load_tokenizer,
    tokenize_chat,
)
from tunegate.config import LoraConfig, PipelineConfig, TrainConfig
from tunegate.data.snapshot import read_snapshot
from tunegate.hashing import sha256_file
from tunegate.models import BaseModel, sha256_dir
from tunegate.precision import dtype_name, dtype_problem, pick_device, resolve_dtype
from tunegate.training.checkpoints import (
    CheckpointFaultPoint,
    checkpoint_dir,
    checkpoint_step,
    job_key,
    last_complete_checkpoint,
    remove_incomplete,
)
from tunegate.training.manifest import build_manifest, read_manifest, write_manifest
from tunegate.training.token_rows import (
    TokenRows,
    expose_head_bias,
    fit_embeddings,
    plan_token_rows,
    set_rows_to_mean,
    trainable_token_indices,
)

if TYPE_CHECKING:
    import torch
    from accelerate import PartialState
    from peft import LoraConfig as PeftLoraConfig
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase
    from trl import SFTConfig

    from datasets import Dataset

log = logging.getLogger(__name__)

# `constant` means constant after warmup here; transformers' plain `constant` ignores warmup.
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
# Checkpoints kept on disk: the newest may be half-written when a run is killed.
KEEP_CHECKPOINTS = 2


class TrainError(RuntimeError):
    """The snapshot cannot be trained on as it is (too long, no assistant turn, odd template)."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced: the adapter directory, its id and how the run went."""

    adapter_dir: Path
    adapter_id: str
    steps: int
    metrics: dict[str, float]


# 1. Tokenize ------------------------------------------------------------------------------------


def build_dataset(
    tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]], max_length: int,
    end: EndOfTurn | None = None,
) -> Dataset:  # fmt: skip
    """Pre-tokenized rows in the form TRL takes as is: `input_ids` + `assistant_masks`.

    A row longer than `max_length` is an upstream bug (curation measures lengths), so it stops the
    run here instead of being truncated: a cut row would teach answers without their end.
    """
    from datasets import Dataset

    try:
        end = end or end_of_turn(tokenizer)
    except ChatError as exc:
        raise TrainError(str(exc)) from None
    rows = []
    for n, messages in enumerate(conversations, start=1):
        try:
            chat = tokenize_chat(tokenizer, messages, end)
        except ChatError as exc:
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


def split_validation(
    dataset: Dataset, fraction: float, seed: int
) -> tuple[Dataset, Dataset | None]:
    """Set `fraction` of the rows aside for the eval loss; the same seed picks the same rows."""
    n_val = int(len(dataset) * fraction)
    if n_val == 0:
        return dataset, None
    if n_val >= len(dataset):
        raise TrainError(f"train.validation_fraction {fraction} leaves no row to train on")
    split = dataset.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    return split["train"], split["test"]


# 2. Load the base model -----------------------------------------------------------------------


def is_main_process() -> bool:
    """True alone, and in rank 0 under `accelerate launch`: the process that records and saves."""
    return int(os.environ.get("RANK", "0")) == 0


def use_gradient_checkpointing(setting: str, device: str) -> bool:
    """`auto`: recompute activations on GPUs only.

    On CPU the default micro-batch is small (4 rows, gradient accumulation makes up the step),
    which already bounds activation memory; recomputing them measured +60% step time there.
    """
    return setting == "on" or (setting == "auto" and device == "cuda")


def process_state() -> PartialState:
    """This process's place in the group `accelerate launch` started (alone: a group of one).

    Created with `cpu=` for a CPU run because accelerate only joins CPU processes into a gloo
    group when asked for CPU; the trainer then reuses this same (singleton) state.
    """
    from accelerate import PartialState

    return PartialState(cpu=pick_device() == "cpu")


def device_map(device: str) -> dict[str, int] | str:
    """Each process keeps the whole model on its own device (DDP replicates, it does not shard)."""
    return {"": process_state().local_process_index} if device == "cuda" else device


def release_freed_memory() -> None:
    """Hand memory freed by loading back to the OS.

    Quantizing to NF4 passes every weight through fp32 temporaries; glibc keeps the freed heap,
    so resident memory stays ~400 MB higher for the whole run unless it is trimmed.
    """
    with suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def nf4_config(dtype: torch.dtype) -> BitsAndBytesConfig:
    """QLoRA's quantization: NF4 with double quantization (export reloads the base with it)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_base(
    base: BaseModel, train: TrainConfig, device: str, rows: TokenRows | None = None
) -> PreTrainedModel:
    """Load the base for training: NF4 + double quantization as in QLoRA, or plain weights.

    With `rows`, the embedding and LM head (never quantized) grow to `rows.vocab_size`, and
    the rows the adapter trains start at the mean row (`token_rows.set_rows_to_mean`).
    """
    import gc

    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(train.compute_dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device_map(device)}
    if train.quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(dtype)
    model = AutoModelForCausalLM.from_pretrained(base.path, **kwargs)
    model.config.use_cache = False  # the KV cache only costs memory while training
    if rows is not None:
        fit_embeddings(model, rows.vocab_size)
        set_rows_to_mean(model, rows.indices)
    if train.quantization == "nf4":
        # Freezes the base, upcasts the small unquantized parts to fp32 for stable training.
        # Checkpointing is left to the trainer (`activation_checkpointing`), one switch only.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    gc.collect()
    release_freed_memory()
    return model


# 3. Train ---------------------------------------------------------------------------------------


def peft_lora_config(
    lora: LoraConfig, token_indices: dict[str, list[int]] | None = None
) -> PeftLoraConfig:
    """The adapter shape from the config (`all-linear`: every linear layer but the LM head),
    plus the embedding and LM-head rows of `token_indices` (`token_rows`)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        trainable_token_indices=token_indices,
        task_type="CAUSAL_LM",
    )


def sft_config(train: TrainConfig, work_dir: Path, device: str, with_eval: bool) -> SFTConfig:
    """TRL arguments from the config; the trainer writes only checkpoints, we save the adapter."""
    import torch
    from trl import SFTConfig

    dtype = resolve_dtype(train.compute_dtype, device)
    steps = train.max_steps
    return SFTConfig(
        output_dir=str(work_dir),
        learning_rate=train.learning_rate,
        max_steps=steps,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        # An int: transformers 5 dropped `warmup_ratio` and reads a float < 1 as a ratio.
        warmup_steps=math.ceil(steps * train.warmup_ratio),
        lr_scheduler_type=SCHEDULERS[train.lr_scheduler],
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        logging_first_step=True,  # the curve starts at the untrained loss
        # Rows are checked against max_seq_length when tokenized and never truncated; TRL
        # refuses a length limit in padding-free mode without packing, so none is passed.
        max_length=None if train.padding_free else train.max_seq_length,
        packing=False,
        padding_free=train.padding_free,
        # Padding-free batches have no padding, and no attention mask to count it with.
        include_num_input_tokens_seen="all" if train.padding_free else "non_padding",
        activation_checkpointing=use_gradient_checkpointing(train.gradient_checkpointing, device),
        activation_checkpointing_kwargs={"use_reentrant": False},
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=device == "cpu",
        eval_strategy="steps" if with_eval else "no",
        eval_steps=train.eval_steps,
        # No activations are kept in eval: one call for a whole step's rows, fewer NF4 unpackings.
        per_device_eval_batch_size=train.batch_size * train.gradient_accumulation_steps,
        prediction_loss_only=True,
        save_strategy="steps" if train.checkpoint_steps else "no",
        save_steps=train.checkpoint_steps or steps,
        save_total_limit=KEEP_CHECKPOINTS,
        report_to="none",
        dataloader_num_workers=0,
    )


@contextmanager
def score_label_positions_only() -> Iterator[None]:
    """Let TRL's fused LM head project only the positions that carry a label, on any device.

    TRL does so on Triton devices only and projects every position elsewhere, to keep shapes
    fixed for compiled backends. Eager CPU compiles nothing, and with assistant-only loss about
    three positions in four are prompt: the 49k-wide head on them measured a quarter of a CPU
    step and most of its peak memory. Same loss, same gradients (tests/training/test_train.py).
    If a TRL upgrade renames the switch, training still runs, only slower.
    """
    from unittest import mock

    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        log.warning("trl.trainer.utils._use_triton is gone: the LM head scores every position")
        yield
        return
    with mock.patch.object(trl_utils, "_use_triton", lambda device: True):
        yield


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


def label_tokens(dataset: Dataset) -> int:
    return sum(sum(m) for m in dataset["assistant_masks"])


# 4. Save ----------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loss_curve(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Train and eval records of the whole run, killed sessions included (the trainer state
    that a checkpoint carries keeps them)."""
    keep = ("step", "loss", "eval_loss", "learning_rate", "grad_norm", "num_input_tokens_seen")
    return [
        {k: float(e[k]) for k in keep if isinstance(e.get(k), int | float)}
        for e in log_history
        if "loss" in e or "eval_loss" in e
    ]


def summarize(
    curve: list[dict[str, float]], summary: dict[str, float], trained_tokens: float,
    session_tokens: float,
) -> dict[str, float]:  # fmt: skip
    """The run's numbers for gates and reports; tokens are non-padding input tokens.

    Rates cover this process's session: after a resume, the steps before it ran elsewhere.
    """
    train = [e for e in curve if "loss" in e]
    evals = [e["eval_loss"] for e in curve if "eval_loss" in e]
    runtime = float(summary.get("train_runtime", 0.0))
    return {
        "train_loss": float(summary.get("train_loss", math.nan)),
        "first_loss": train[0]["loss"] if train else math.nan,
        "last_loss": train[-1]["loss"] if train else math.nan,
        "last_eval_loss": evals[-1] if evals else math.nan,
        "train_runtime_s": runtime,
        "trained_tokens": trained_tokens,
        "tokens_per_s": session_tokens / runtime if runtime > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
    }


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


def find_resume_point(work_dir: Path, resume: bool, procs: PartialState) -> Path | None:
    """The checkpoint to resume from, after the main process tidied the job's directory.

    Half-written checkpoints (a kill during a save) are deleted; with `resume` off, every
    checkpoint of the job is, so the trainer's rotation never mixes two runs.
    """
    if procs.is_main_process:
        if resume:
            remove_incomplete(work_dir)
        else:
            for old in work_dir.glob("checkpoint-*"):
                shutil.rmtree(old, ignore_errors=True)
    procs.wait_for_everyone()
    found = last_complete_checkpoint(work_dir) if resume else None
    if found is not None:
        log.info("resuming from %s (step %d)", found, checkpoint_step(found))
    return found


def write_generation_config(
    model_dir: Path, target: Path, stop_ids: list[int], pad_id: int | None
) -> None:
    """The base's generation config with the end of turn as stop token(s): generation stops
    where the trained answers end, not at an `eos_token` the template never writes."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model_dir)
    except OSError:  # the base has none
        generation = GenerationConfig()
    generation.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    if generation.pad_token_id is None and pad_id is not None:
        generation.pad_token_id = pad_id
    generation.save_pretrained(target)


def save_adapter(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, output_dir: Path,
    manifest: dict[str, Any], extra: dict[str, object], base_dir: Path,
) -> None:  # fmt: skip
    """Weights, tokenizer, generation config and manifest, written aside and renamed into
    place in one step."""
    partial = fresh_partial(output_dir)
    # The trained token rows are in the adapter; PEFT would otherwise save the whole embedding
    # and LM head of a resized model (gigabytes for a real one).
    model.save_pretrained(partial, save_embedding_layers=False)
    tokenizer.save_pretrained(partial)
    write_generation_config(base_dir, partial, manifest["chat"]["stop_token_ids"],
                            tokenizer.pad_token_id)  # fmt: skip
    full = build_manifest(adapter_id=sha256_dir(partial), **manifest)
    write_manifest(partial, {**full, **extra})
    if output_dir.exists():
        output_dir.rmdir()  # empty (checked before training): a caller may create it beforehand
    partial.rename(output_dir)


@contextmanager
def trainer_dir(config: PipelineConfig, key: str) -> Iterator[Path]:
    """Where the trainer writes: the job's checkpoint dir, or scratch when checkpoints are off."""
    if not config.train.checkpoint_steps:
        with tempfile.TemporaryDirectory(prefix="tunegate-train-") as scratch:
            yield Path(scratch)
        return
    directory = checkpoint_dir(config.workspace_dir, key)
    directory.mkdir(parents=True, exist_ok=True)
    yield directory


def train_adapter(
    config: PipelineConfig,
    base: BaseModel,
    snapshot_path: Path,
    output_dir: Path,
    on_log: Callable[[dict[str, float]], None] | None = None,
    manifest_extra: dict[str, object] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on a curated snapshot and save it with a manifest.

    `on_log` gets every train record (`loss`, `learning_rate`, `tokens_per_s`) and eval record
    (`eval_loss`) with its `step`, on the main process.
    """
    from transformers import ProgressCallback, set_seed
    from trl import SFTTrainer

    from tunegate.training.manifest import MANIFEST_KEYS
    from tunegate.training.progress import LogRecorder, ProgressBar

    train, device, procs = config.train, pick_device(), process_state()
    if why := dtype_problem(train.compute_dtype, device):
        raise TrainError(f"train.compute_dtype: {why}")
    dtype = resolve_dtype(train.compute_dtype, device)
    extra = dict(manifest_extra or {})
    clash = sorted(set(extra) & MANIFEST_KEYS)
    if clash:
        raise TrainError(f"manifest_extra would overwrite {clash}")
    check_output_dir(output_dir)

    # 1. tokenize: every row checked here, before minutes of model loading
    try:
        tokenizer = load_tokenizer(base.path, config)
        end = end_of_turn(tokenizer, config.model.end_of_turn)
        rows = plan_token_rows(base.path, tokenizer, end, config.model.add_missing_tokens)
    except ChatError as exc:
        raise TrainError(str(exc)) from None
    conversations = read_snapshot(snapshot_path)
    dataset = build_dataset(tokenizer, conversations, train.max_seq_length, end)
    train_set, val_set = split_validation(dataset, train.validation_fraction, train.seed)

    # 2. load; the seed is set first so LoRA's random init is reproducible
    set_seed(train.seed)
    model = load_base(base, train, device, rows)

    # 3. train; the checkpoint dir is the job's, so a killed run's successor finds it
    snapshot_sha = sha256_file(snapshot_path)
    key = job_key(config.config_hash(), base.sha256, snapshot_sha, procs.num_processes)
    recorder = LogRecorder(on_log)
    with trainer_dir(config, key) as work_dir:
        trainer = SFTTrainer(
            model=model,
            args=sft_config(train, work_dir, device, with_eval=val_set is not None),
            train_dataset=train_set,
            eval_dataset=val_set,
            processing_class=tokenizer,
            peft_config=peft_lora_config(config.lora, trainable_token_indices(model, rows)),
            callbacks=[recorder, ProgressBar(), CheckpointFaultPoint()],
        )
        trainer.remove_callback(ProgressCallback)  # ours shows tokens/s too
        try:
            expose_head_bias(trainer.model)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        _check_labels(trainer.train_dataset, len(train_set), label_tokens(train_set))
        match_trainable_dtype(trainer.model, dtype)
        resume = find_resume_point(work_dir, train.resume, procs)
        with score_label_positions_only():
            summary = trainer.train(resume_from_checkpoint=str(resume) if resume else None).metrics
        state = trainer.state
        curve = loss_curve(state.log_history)
        metrics = summarize(curve, summary, float(state.num_input_tokens_seen),
                            recorder.session_tokens)  # fmt: skip
        metrics.update(
            rows=float(len(train_set)), snapshot_label_tokens=float(label_tokens(dataset))
        )
        log.info(
            "trained %d steps on %s x%d (%s): %.0f tokens in %.1f s = %.0f tokens/s, "
            "loss %.3f -> %.3f",
            state.global_step, device, procs.num_processes, train.quantization,
            recorder.session_tokens, metrics["train_runtime_s"], metrics["tokens_per_s"],
            metrics["first_loss"], metrics["last_loss"],
        )  # fmt: skip

        # 4. save (main process): the id hashes the adapter weights only, not the manifest
        if procs.is_main_process:
            manifest = {
                "base_model": {"ref": base.ref, "sha256": base.sha256},
                "snapshot_sha256": snapshot_sha,
                "config_hash": config.config_hash(),
                "seed": train.seed,
                "steps": state.global_step,
                "device": device,
                "world_size": procs.num_processes,
                "quantization": train.quantization,
                "compute_dtype": dtype_name(dtype),
                "train": train.model_dump(mode="json"),
                "lora": config.lora.model_dump(mode="json"),
                "validation_rows": len(val_set) if val_set is not None else 0,
                "resumed_from_step": checkpoint_step(resume) if resume else None,
                "metrics": metrics,
                "log_history": curve,
                "chat": chat_summary(tokenizer, end),
                "tokens": rows.summary(),
            }
            save_adapter(trainer.model, tokenizer, output_dir, manifest, extra, base.path)
            if train.checkpoint_steps:
                shutil.rmtree(work_dir, ignore_errors=True)  # the adapter supersedes them
    procs.wait_for_everyone()
    adapter_id = read_manifest(output_dir)["adapter_id"]
    return TrainResult(output_dir, adapter_id, state.global_step, metrics)
