"""Evaluation with lm-eval, offline: the held-out task and the general-capability suite.

Two groups of lm-eval tasks, run for one subject at a time (the base model, or base + adapter):

- held-out (`evals/tasks/heldout/`): the project's own task with the training prompt (chat
  template, system turn, ticket as the user turn): generated replies scored per field
  (`tunegate_heldout`) and the log-likelihood of the reference answer
  (`tunegate_heldout_loglik`);
- general (`evals/tasks/general/`): PIQA, ARC-Easy and HellaSwag, zero-shot log-likelihood
  multiple choice without a chat template, as their published scores are measured.

Base and adapter run with the same tokenizer, tasks, items and settings, so their scores
compare item by item (the general gate pairs them). Every task reads a file shipped in the
repository or named by the config; nothing downloads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tunegate import config as settings
from tunegate.chat import ChatError, end_of_turn, load_tokenizer
from tunegate.config import PipelineConfig
from tunegate.evaluation.sequential import Look
from tunegate.hashing import sha256_file
from tunegate.models import BaseModel
from tunegate.precision import dtype_name, pick_device, resolve_dtype
from tunegate.training.token_rows import fit_embeddings

if TYPE_CHECKING:  # heavy imports stay inside the functions that need them
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TASKS_DIR = settings.EVALS_DIR / "tasks"
GENERAL_DATA_DIR = settings.EVALS_DIR / "data" / "general"

TASK = "tunegate_heldout"
LOGLIK_TASK = "tunegate_heldout_loglik"
TASK_YAML = TASKS_DIR / "heldout" / "heldout.yaml"
LOGLIK_YAML = TASKS_DIR / "heldout" / "heldout_loglik.yaml"
METRICS = ("field_accuracy", "json_valid", "exact_match")
GENERAL_METRICS = ("p_gold", "acc", "acc_norm")
# Computed by tunegate from each item's choice log-likelihoods, not by lm-eval.
DERIVED_METRICS = ("p_gold",)


class EvalError(RuntimeError):
    """An evaluation cannot run (missing data or task files, lm-eval returned nothing)."""


@dataclass(frozen=True)
class EvalTask:
    """One lm-eval task as tunegate runs it: definition, data file and run settings."""

    name: str  # the lm-eval task name, e.g. "tunegate_piqa"
    yaml: Path  # its definition in `evals/tasks/`
    data: Path  # the file its `data_files` is pointed at
    metrics: tuple[str, ...]  # metrics it reports, the first being each sample's `score`
    chat: bool  # prompt through the chat template (held-out) or as plain text (general)
    limit: int | None  # first N items of the file
    batch_size: int
    dtype: str  # "bfloat16" or "float32": both subjects run in it
    max_new_tokens: int | None = None  # generation tasks only
    backend: str = "lm_eval"  # eval.general.backend: what computes log-likelihoods

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def settings(self) -> dict[str, Any]:
        """What, besides the model and the files, decides this task's scores. The backend is
        named only when it is not lm-eval's own, so base scores cached before it existed keep
        their key."""
        settings = {"task": self.name, "chat": self.chat, "limit": self.limit,
                    "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
                    "dtype": self.dtype, "metrics": sorted(self.metrics)}  # fmt: skip
        return settings if self.backend == "lm_eval" else {**settings, "backend": self.backend}


class Sample(NamedTuple):
    """One scored item: the prompt the model saw, its answer, the reference and the scores."""

    item_id: str
    prediction: str
    target: str
    score: float  # the task's primary metric
    scores: dict[str, float]  # every metric of the item
    prompt: str
    choice_logliks: tuple[float, ...] = ()  # multiple choice: log-likelihood of each choice


@dataclass(frozen=True)
class EvalOutcome:
    """Scores of one subject on one task."""

    subject: str  # "base" or "adapter"
    task: str
    metrics: dict[str, tuple[float, float | None]]  # name -> (value, stderr or None)
    n: int
    samples: list[Sample]
    seconds: float  # wall time of the lm-eval run this task was part of
    primary: str  # the metric each sample's `score` holds
    dtype: str  # what the model computed in
    look: Look | None = None  # sequential evaluation: where it stopped (None: every item)


def heldout_tasks(config: PipelineConfig) -> list[EvalTask]:
    """The held-out generation task and the reference log-likelihood, on `eval.heldout_path`."""
    heldout = config.resolve(config.eval.heldout_path)
    if not heldout.is_file():
        raise EvalError(f"held-out file not found: {heldout} (eval.heldout_path)")
    e, dtype = config.eval, eval_dtype(config)
    return [
        EvalTask(TASK, TASK_YAML, heldout, METRICS, True, e.max_items, e.batch_size, dtype,
                 e.max_new_tokens),
        EvalTask(LOGLIK_TASK, LOGLIK_YAML, heldout, ("ref_loglik",), True, e.max_items,
                 e.batch_size, dtype),
    ]  # fmt: skip


def general_tasks(config: PipelineConfig) -> list[EvalTask]:
    """The general-capability suite of `eval.general.tasks`, gated metric first."""
    g, dtype = config.eval.general, eval_dtype(config)
    metric = config.gates.general.metric
    metrics = (metric, *(m for m in GENERAL_METRICS if m != metric))
    return [
        EvalTask(f"tunegate_{name}", settings.GENERAL_TASKS_DIR / f"{name}.yaml",
                 GENERAL_DATA_DIR / f"{name}.jsonl", metrics, False, g.limit, g.batch_size, dtype,
                 backend=g.backend)
        for name in g.tasks
    ]  # fmt: skip


def eval_dtype(config: PipelineConfig) -> str:
    """The dtype both subjects are evaluated in: `eval.compute_dtype` resolved for this device.

    bf16 where it is native: on a CPU with AMX the embedded model's forward pass measured 1,923
    tokens/s in bf16 against 278 in fp32, and bench/eval.py checks that the scores agree.
    """
    return dtype_name(resolve_dtype(config.eval.compute_dtype, pick_device()))


def evaluate(
    base: BaseModel, adapter_dir: Path | None, subject: str, tasks: Sequence[EvalTask],
    config: PipelineConfig | None = None,
) -> list[EvalOutcome]:  # fmt: skip
    """Run `tasks` for the base model (+ adapter): one model load, one lm-eval call per group.

    `config` gives the chat format (`model.chat_template`, `system_role`, `end_of_turn`) the
    adapter was trained with; generation stops at the template's end of turn.
    """
    # 1. Inputs: task definitions and data files, everything offline.
    dtype = check_inputs(tasks)
    # 2. Model: base weights with the adapter merged in, when there is one.
    model, tokenizer = load_model(base.path, adapter_dir, dtype, config)
    try:
        end = end_of_turn(tokenizer, config.model.end_of_turn if config else None)
    except ChatError as exc:
        raise EvalError(str(exc)) from None

    # 3. One lm-eval run per group of tasks that share the prompt style and settings.
    groups: dict[tuple[Any, ...], list[EvalTask]] = {}
    for task in tasks:
        key = (task.chat, task.limit, task.batch_size, task.max_new_tokens, task.backend)
        groups.setdefault(key, []).append(task)
    outcomes = []
    for group in groups.values():
        results, seconds = run_tasks(model, tokenizer, group, stop=end.text)
        done = [to_outcome(results, task, subject=subject, seconds=seconds) for task in group]
        report_speed(subject, done, results, seconds)
        outcomes.extend(done)
    return outcomes


def check_inputs(tasks: Sequence[EvalTask]) -> str:
    """The one dtype `tasks` share, once their files are there; libraries set offline."""
    for task in tasks:
        for path in (task.yaml, task.data):
            if not path.is_file():
                raise EvalError(f"{task.name}: {path} not found")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    dtypes = {task.dtype for task in tasks}
    if len(dtypes) != 1:
        raise EvalError(f"tasks of one evaluation must share a dtype, got {sorted(dtypes)}")
    return dtypes.pop()


def load_model(
    model_dir: Path, adapter_dir: Path | None, dtype: str, config: PipelineConfig | None = None
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Model in `dtype` on the best device, and tokenizer; an adapter is merged into the weights.

    Merging makes the adapter's forward pass the base model's (no extra LoRA matmuls), so
    both subjects cost the same to evaluate; lm-eval would ignore `peft=` for a model object.
    The merge runs in fp32 and the merged weights are cast once, so base and adapter are
    rounded to `dtype` the same way.
    """
    import torch

    model, tokenizer = load_base_fp32(model_dir, config)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.to(device=pick_device(), dtype=getattr(torch, dtype))
    return model, tokenizer


def load_base_fp32(
    model_dir: Path, config: PipelineConfig | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model in fp32 on the CPU (where adapters are merged), and the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    # The base tokenizer with the configured chat format for both subjects: same prompt
    # tokens, comparable scores, and the prompt the adapter was trained with.
    try:
        tokenizer = load_tokenizer(model_dir, config)
    except ChatError as exc:
        raise EvalError(str(exc)) from None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # Markers added by `model.add_missing_tokens`: the base reads them at the mean row, the
    # adapter brings their trained rows.
    fit_embeddings(model, len(tokenizer))
    return model, tokenizer


def run_tasks(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[EvalTask],
    stop: str | None = None,
) -> tuple[dict, float]:
    """lm-eval's `simple_evaluate` on tasks that share their settings; results and seconds."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tunegate.evaluation.shared_prefix import SharedPrefixLM

    first = tasks[0]
    backend = SharedPrefixLM if first.backend == "shared_prefix" else HFLM
    lm = backend(pretrained=model, tokenizer=tokenizer, batch_size=first.batch_size)
    gen = first.max_new_tokens  # generation tasks only (the groups never mix them with others)
    with tempfile.TemporaryDirectory(prefix="tunegate-eval-") as include_dir:
        for task in tasks:
            write_task_overlay(Path(include_dir), task)
        # include_defaults=False: skip indexing lm-eval's ~14,700 built-in tasks (~10 s).
        manager = TaskManager(include_path=include_dir, include_defaults=False)
        start = time.perf_counter()
        results = simple_evaluate(
            model=lm,
            tasks=[t.name for t in tasks],
            task_manager=manager,
            limit=first.limit,
            log_samples=True,
            apply_chat_template=first.chat,  # held-out: the training prompt, system turn included
            # merged into the task's own; answers end at the template's end of turn
            gen_kwargs={"max_gen_toks": gen, **({"until": [stop]} if stop else {})}
            if gen
            else None,
            bootstrap_iters=1000,  # > 0 for any stderr; mean metrics get the closed form
        )
        seconds = time.perf_counter() - start
    if results is None:
        raise EvalError("lm-eval returned no results")
    return results, seconds


def write_task_overlay(include_dir: Path, task: EvalTask) -> Path:
    """A task file that includes the repository's task YAML and only swaps in the data file.

    lm-eval resolves `include:` (and the `!function` references of the included file)
    relative to the included file, so the scoring code stays where it is.
    """
    overlay = {
        "include": str(task.yaml),
        "task": task.name,
        "dataset_kwargs": {"data_files": {"test": str(task.data.resolve())}},
    }
    path = include_dir / f"{task.name}.yaml"
    path.write_text(json.dumps(overlay, indent=2))  # JSON is valid YAML, with safe quoting
    return path


def to_outcome(results: dict, task: EvalTask, *, subject: str, seconds: float) -> EvalOutcome:
    """One task of lm-eval's results dict (with logged samples) as an EvalOutcome."""
    scores = results["results"][task.name]
    samples = [to_sample(s, task) for s in sorted(results["samples"][task.name],
                                                  key=lambda s: s["doc_id"])]  # fmt: skip
    metrics = {}
    for name in task.metrics:
        if name in DERIVED_METRICS:  # mean and its standard error over the items
            metrics[name] = mean_stderr([s.scores[name] for s in samples])
            continue
        stderr = scores.get(f"{name}_stderr,none")
        metrics[name] = (
            float(scores[f"{name},none"]),
            None if stderr is None or stderr == "N/A" else float(stderr),
        )
    return EvalOutcome(subject, task.name, metrics, len(samples), samples, seconds, task.primary,
                       task.dtype)  # fmt: skip


def to_sample(logged: dict, task: EvalTask) -> Sample:
    """One logged lm-eval sample: what the model answered (the choice it picked, for
    multiple choice, by the primary metric's rule) against the reference."""
    doc = logged["doc"]
    item_id = str(doc.get("id", logged["doc_id"]))
    scores = {m: float(logged[m]) for m in task.metrics if m not in DERIVED_METRICS}
    prompt = logged["arguments"][0][0]
    choice_logliks: tuple[float, ...] = ()
    if "choices" in doc:  # multiple choice: one (log-likelihood, is_greedy) per choice
        lls = [float(ll) for ll, _ in logged["filtered_resps"]]
        choice_logliks = tuple(lls)
        if "p_gold" in task.metrics:
            scores["p_gold"] = p_gold(lls, int(doc["gold"]))
        if task.primary == "acc_norm":  # lm-eval's rule: log-likelihood per character
            lls = [ll / len(c) for ll, c in zip(lls, doc["choices"], strict=True)]
        picked = max(range(len(lls)), key=lls.__getitem__)
        prediction, target = doc["choices"][picked], doc["choices"][int(doc["gold"])]
    elif task.max_new_tokens is not None:  # generation
        prediction, target = logged["filtered_resps"][0], str(logged["target"])
    else:  # log-likelihood of the reference: the score is the answer
        prediction, target = f"{scores[task.primary]:.3f}", str(logged["target"])
    return Sample(item_id, prediction, target, scores[task.primary], scores, prompt, choice_logliks)


def p_gold(logliks: Sequence[float], gold: int) -> float:
    """Probability of the gold choice, normalised over the choices: softmax of the choices'
    log-likelihoods at the gold one.

    Unlike acc (0 or 1), it moves with every change in the model's preference, so a paired
    difference over n items is far less noisy: the general gate decides with fewer items.
    """
    top = max(logliks)
    weights = [math.exp(ll - top) for ll in logliks]
    return weights[gold] / sum(weights)


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (as lm-eval reports its own metrics)."""
    n = len(values)
    if n == 0:
        raise EvalError("no items scored")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def report_speed(subject: str, outcomes: list[EvalOutcome], results: dict, seconds: float) -> None:
    """Print items/s and lm-eval requests/s of one run (what `eval.*.batch_size` tunes)."""
    items = sum(o.n for o in outcomes)
    requests = sum(len(s["resps"]) for o in outcomes for s in results["samples"][o.task])
    names = ", ".join(o.task.removeprefix("tunegate_") for o in outcomes)
    print(
        f"[eval] {subject} ({outcomes[0].dtype}): {names}: {items} items, {requests} requests "
        f"in {seconds:.1f} s "
        f"({items / seconds:.2f} items/s, {requests / seconds:.1f} requests/s)"
    )


def cache_key(task: EvalTask, base: BaseModel, chat: dict[str, Any] | None = None) -> str:
    """Everything a base model's scores on a task depend on, hashed: a later run with the
    same key may reuse them instead of evaluating the base model again.

    Base weights and the other model files (tokenizer, template, config), the task's
    definition files and data, its settings (the dtype among them), the device and the
    library versions.
    """
    weights = (".safetensors", ".bin")  # already in base.sha256
    model_files = sorted(
        p
        for p in base.path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix not in weights
    )
    definition = sorted(task.yaml.parent.glob("*.yaml")) + sorted(task.yaml.parent.glob("*.py"))
    key = {
        "base_weights": base.sha256,
        "model_files": {p.name: sha256_file(p) for p in model_files},
        "definition": {p.name: sha256_file(p) for p in definition},
        "data": sha256_file(task.data),
        "settings": task.settings(),
        "chat": chat or {},  # model.chat_template / system_role / end_of_turn
        "device": pick_device(),
        "versions": {
            lib: importlib.metadata.version(lib) for lib in ("lm_eval", "transformers", "torch")
        },
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
