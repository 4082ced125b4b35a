"""Held-out evaluation: the project's own task, scored by lm-eval, for the base model or an adapter.

The task lives in `evals/tasks/heldout/` (YAML + scoring in `utils.py`). Its prompt is the
training prompt: lm-eval applies the tokenizer's chat template to the task's system
message and the ticket as the user turn, then adds the assistant header. Base and adapter
are evaluated with the same tokenizer, task and settings, so their scores compare.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunegate.config import PipelineConfig
from tunegate.models import BaseModel

if TYPE_CHECKING:  # heavy imports stay inside the functions that need them
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TASK = "tunegate_heldout"
TASK_YAML = Path(__file__).resolve().parents[1] / "evals" / "tasks" / "heldout" / "heldout.yaml"
METRICS = ("field_accuracy", "json_valid", "exact_match")


class EvalError(RuntimeError):
    """The held-out evaluation cannot run (missing data or task files)."""


@dataclass(frozen=True)
class EvalOutcome:
    """Scores of one subject on the held-out task."""

    subject: str  # "base" or "adapter"
    task: str  # "tunegate_heldout"
    metrics: dict[str, tuple[float, float | None]]  # name -> (value, stderr or None)
    n: int
    samples: list[tuple[str, str, str, float]]  # (item id, prediction, target, field_accuracy)
    seconds: float  # wall time of the lm-eval run (task load, generation, scoring)


def evaluate_heldout(
    config: PipelineConfig, base: BaseModel, adapter_dir: Path | None, subject: str
) -> EvalOutcome:
    """Generate replies for the held-out items with the base model (+ adapter) and score them."""
    # 1. Inputs: the held-out file from the config, everything offline.
    heldout = config.resolve(config.eval.heldout_path)
    if not heldout.is_file():
        raise EvalError(f"held-out file not found: {heldout} (eval.heldout_path)")
    if not TASK_YAML.is_file():
        raise EvalError(f"held-out task definition not found: {TASK_YAML}")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"

    # 2. Model: base weights, wrapped in the adapter when there is one.
    model, tokenizer = load_model(base.path, adapter_dir)

    # 3. Run lm-eval on a copy of the task that points at this run's held-out file.
    results, seconds = run_task(
        model,
        tokenizer,
        heldout,
        batch_size=config.eval.batch_size,
        max_new_tokens=config.eval.max_new_tokens,
        limit=config.eval.max_items,
    )

    # 4. Results into an EvalOutcome.
    outcome = to_outcome(results, subject=subject, seconds=seconds)
    print(
        f"[eval] {subject}: {outcome.n} held-out items in {seconds:.1f} s "
        f"({outcome.n / seconds:.2f} items/s, batch size {config.eval.batch_size})"
    )
    return outcome


def load_model(
    model_dir: Path, adapter_dir: Path | None
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Model (fp32 on CPU, bf16 on CUDA) and tokenizer; the adapter wraps the model if given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32
    )
    if adapter_dir is not None:
        from peft import PeftModel

        # lm-eval ignores its own `peft=` argument for an in-memory model: wrap it here.
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.to("cuda" if cuda else "cpu")
    # The base tokenizer for both subjects: same prompt tokens, comparable scores.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


def run_task(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    heldout: Path,
    *,
    batch_size: int,
    max_new_tokens: int,
    limit: int | None,
) -> tuple[dict, float]:
    """lm-eval's `simple_evaluate` on the held-out task; returns its results and wall seconds."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="tunegate-eval-") as include_dir:
        write_task_overlay(Path(include_dir), heldout)
        # include_defaults=False: skip indexing lm-eval's ~14,700 built-in tasks (~10 s).
        tasks = TaskManager(include_path=include_dir, include_defaults=False)
        start = time.perf_counter()
        results = simple_evaluate(
            model=lm,
            tasks=[TASK],
            task_manager=tasks,
            limit=limit,
            log_samples=True,
            apply_chat_template=True,  # the training prompt: chat template + system turn
            gen_kwargs={"max_gen_toks": max_new_tokens},  # merged into the task's own
        )
        seconds = time.perf_counter() - start
    if results is None:
        raise EvalError("lm-eval returned no results")
    return results, seconds


def write_task_overlay(include_dir: Path, heldout: Path) -> Path:
    """A task file that includes the repo's task YAML and only swaps in the held-out file.

    lm-eval resolves `include:` (and the `!function` references of the included file)
    relative to the included file, so the scoring code stays where it is.
    """
    overlay = {
        "include": str(TASK_YAML),
        "dataset_kwargs": {"data_files": {"test": str(heldout.resolve())}},
    }
    path = include_dir / f"{TASK}.yaml"
    path.write_text(json.dumps(overlay, indent=2))  # JSON is valid YAML, with safe quoting
    return path


def to_outcome(results: dict, *, subject: str, seconds: float) -> EvalOutcome:
    """lm-eval's results dict (with logged samples) as an EvalOutcome."""
    scores = results["results"][TASK]
    metrics = {}
    for name in METRICS:
        stderr = scores.get(f"{name}_stderr,none")
        metrics[name] = (
            float(scores[f"{name},none"]),
            None if stderr is None or stderr == "N/A" else float(stderr),
        )
    samples = [
        (
            str(s["doc"].get("id", s["doc_id"])),
            s["filtered_resps"][0],
            s["target"],
            float(s["field_accuracy"]),
        )
        for s in sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    ]
    return EvalOutcome(
        subject=subject,
        task=TASK,
        metrics=metrics,
        n=len(samples),
        samples=samples,
        seconds=seconds,
    )
