"""The adapter's general suite, chunk by chunk: each task stops once its gate is conclusive.

The base model's scores on the full set are known (cached, or evaluated just before); the
adapter answers the next chunk of items of every task still open, in one lm-eval run, and
each task's paired scores are read with the critical value of this look
(`tunegate/evaluation/sequential.py`). Each chunk is its own data file of the items it holds,
so no item is evaluated twice and the items are the base's, in the same order.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tunegate.config import PipelineConfig
from tunegate.evaluation.evaluate import (
    EvalOutcome,
    EvalTask,
    Sample,
    load_model,
    mean_stderr,
    report_speed,
    run_tasks,
    to_outcome,
)
from tunegate.evaluation.sequential import Design, Look, design, look_outcome
from tunegate.models import BaseModel


def task_lines(task: EvalTask) -> list[str]:
    """The items of a task as lm-eval's `limit` takes them: the file's first `limit` lines."""
    lines = [line for line in task.data.read_text().splitlines() if line.strip()]
    return lines[: task.limit] if task.limit else lines


def sequential_designs(config: PipelineConfig, tasks: Sequence[EvalTask]) -> dict[str, Design]:
    """Each task's looks and critical values at the gate's one-sided alpha."""
    seq, gate = config.eval.general.sequential, config.gates.general
    return {t.name: design(len(task_lines(t)), seq.chunk, 1 - gate.confidence, seq.spending)
            for t in tasks}  # fmt: skip


def evaluate_in_chunks(
    base: BaseModel,
    adapter_dir: Path,
    tasks: Sequence[EvalTask],
    base_scores: Mapping[str, Mapping[str, float]],
    config: PipelineConfig,
) -> list[EvalOutcome]:
    """The adapter on `tasks`, look by look, until each task's general gate is pass or fail
    or its items run out. `base_scores`: task -> item id -> the base's `gates.general.metric`.
    A task of one look (chunk >= its size) is the fixed-size test: its outcome has no `look`.
    """
    metric, gate = config.gates.general.metric, config.gates.general
    designs = sequential_designs(config, tasks)
    lines = {t.name: task_lines(t) for t in tasks}
    model, tokenizer = load_model(base.path, adapter_dir, tasks[0].dtype, config)
    samples: dict[str, list[Sample]] = {t.name: [] for t in tasks}
    seconds = {t.name: 0.0 for t in tasks}
    done: dict[str, EvalOutcome] = {}
    with tempfile.TemporaryDirectory(prefix="tunegate-chunks-") as tmp:
        for k in range(max(d.looks for d in designs.values())):
            # 1. The next chunk of every task still open, one lm-eval run for all of them.
            chunk = []
            for t in tasks:
                if t.name in done:
                    continue
                start = designs[t.name].sizes[k - 1] if k else 0
                path = Path(tmp) / f"{t.name}-look{k + 1}.jsonl"
                path.write_text("\n".join(lines[t.name][start : designs[t.name].sizes[k]]) + "\n")
                chunk.append(dataclasses.replace(t, data=path, limit=None))
            if not chunk:  # every task conclusive before its last look
                break
            results, secs = run_tasks(model, tokenizer, chunk)
            fresh = [to_outcome(results, t, subject="adapter", seconds=secs) for t in chunk]
            report_speed("adapter", fresh, results, secs)
            # 2. Each task's gate at this look: stop when conclusive or at the last look.
            for t, o in zip(chunk, fresh, strict=True):
                samples[t.name] += o.samples
                seconds[t.name] += secs
                d, short = designs[t.name], t.name.removeprefix("tunegate_")
                diff = [s.scores[metric] - base_scores[t.name].get(s.item_id, float("nan"))
                        for s in samples[t.name]]  # fmt: skip
                verdict = look_outcome(diff, d.z[k], -gate.drop_limit(short))
                if verdict is None and k + 1 < d.looks:
                    continue
                n = len(samples[t.name])
                look = Look(k + 1, d.looks, n, d.sizes[-1], d.z[k]) if d.looks > 1 else None
                print(f"[eval] adapter: {short} stopped at look {k + 1} of {d.looks} "
                      f"({n} of {d.sizes[-1]} items): {verdict or 'inconclusive'}")  # fmt: skip
                done[t.name] = merged(t, samples[t.name], seconds[t.name], look)
    return [done[t.name] for t in tasks]


def merged(task: EvalTask, samples: list[Sample], seconds: float, look: Look | None) -> EvalOutcome:
    """One task's chunks as one outcome: every metric the mean over all its items."""
    metrics = {m: mean_stderr([s.scores[m] for s in samples]) for m in task.metrics}
    return EvalOutcome("adapter", task.name, metrics, len(samples), samples, seconds,
                       task.primary, task.dtype, look)  # fmt: skip
