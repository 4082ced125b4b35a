"""The general suite of base and adapter, chunk by chunk: each task stops once its gate is
conclusive.

At every look both subjects answer the next chunk of items of every task still open, one
lm-eval run per subject (one model in memory, its weights switched: `subjects.py`), and each
task's paired scores are read with the critical value of this look
(`tunegate/evaluation/sequential.py`). The base answers only the items its cached scores lack,
so a first run pays for the base on the items the decision needs, not on the full set, and a
later run with the same base reuses them. Each chunk is its own data file of the items it
holds, so no item is evaluated twice and both subjects answer the same items in the same order.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tunegate.config import PipelineConfig
from tunegate.evaluation.evaluate import (
    EvalError,
    EvalOutcome,
    EvalTask,
    Sample,
    check_inputs,
    mean_stderr,
    report_speed,
    run_tasks,
    to_outcome,
)
from tunegate.evaluation.sequential import Design, Look, design, look_outcome
from tunegate.evaluation.subjects import Subject, load_subjects
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
    known: Mapping[str, Sequence[Sample]],
    config: PipelineConfig,
) -> tuple[list[EvalOutcome], list[EvalOutcome]]:
    """Base and adapter on `tasks`, look by look, until each task's general gate is pass or
    fail or its items run out; (base outcomes, adapter outcomes) in task order.

    `known`: task -> the base's samples already scored (cached from an earlier run); the base
    answers only the items of a chunk that are not among them. A base outcome holds every
    item it has scores for (cached and new), an adapter outcome the items it answered; the
    gate pairs them item by item. A task of one look (chunk >= its size) is the fixed-size
    test: its adapter outcome has no `look`.
    """
    metric, gate = config.gates.general.metric, config.gates.general
    designs = sequential_designs(config, tasks)
    lines = {t.name: task_lines(t) for t in tasks}
    ids = {t.name: item_ids(t, lines[t.name]) for t in tasks}
    subjects = load_subjects(base.path, adapter_dir, check_inputs(tasks), config)
    scored: dict[str, dict[str, Sample]] = {t.name: {s.item_id: s for s in known.get(t.name, ())}
                                            for t in tasks}  # fmt: skip
    samples: dict[str, list[Sample]] = {t.name: [] for t in tasks}
    seconds: dict[Subject, dict[str, float]] = {s: {t.name: 0.0 for t in tasks}
                                                for s in ("base", "adapter")}  # fmt: skip
    done: dict[str, Look | None] = {}  # task -> where it stopped (None: a one-look task)
    with tempfile.TemporaryDirectory(prefix="tunegate-chunks-") as tmp:
        for k in range(max(d.looks for d in designs.values())):
            # 1. The next chunk of every task still open: the base's missing items, then the
            # adapter's, one lm-eval run per subject.
            chunks: dict[Subject, list[EvalTask]] = {"base": [], "adapter": []}
            for t in tasks:
                if t.name in done:
                    continue
                start = designs[t.name].sizes[k - 1] if k else 0
                span = range(start, designs[t.name].sizes[k])
                items = [lines[t.name][i] for i in span]
                missing = [lines[t.name][i] for i in span if ids[t.name][i] not in scored[t.name]]
                for subject, chunk in (("base", missing), ("adapter", items)):
                    if chunk:
                        path = Path(tmp) / f"{t.name}-{subject}-look{k + 1}.jsonl"
                        path.write_text("\n".join(chunk) + "\n")
                        chunks[subject].append(dataclasses.replace(t, data=path, limit=None))
            if not chunks["adapter"]:  # every task conclusive before its last look
                break
            fresh: dict[Subject, list[EvalOutcome]] = {}
            for subject, chunk in chunks.items():
                if chunk:
                    results, secs = run_tasks(subjects.use(subject), subjects.tokenizer, chunk)
                    fresh[subject] = [to_outcome(results, t, subject=subject, seconds=secs)
                                      for t in chunk]  # fmt: skip
                    report_speed(subject, fresh[subject], results, secs)
                    for o in fresh[subject]:
                        seconds[subject][o.task] += secs
            for o in fresh.get("base", []):
                scored[o.task].update((s.item_id, s) for s in o.samples)
            # 2. Each task's gate at this look: stop when conclusive or at the last look.
            for o in fresh["adapter"]:
                samples[o.task] += o.samples
                d, short = designs[o.task], o.task.removeprefix("tunegate_")
                diff = [s.scores[metric] - scored[o.task][s.item_id].scores[metric]
                        for s in samples[o.task]]  # fmt: skip
                verdict = look_outcome(diff, d.z[k], -gate.drop_limit(short))
                if verdict is None and k + 1 < d.looks:
                    continue
                n = len(samples[o.task])
                look = Look(k + 1, d.looks, n, d.sizes[-1], d.z[k]) if d.looks > 1 else None
                print(f"[eval] {short} stopped at look {k + 1} of {d.looks} ({n} of "
                      f"{d.sizes[-1]} items): {verdict or 'inconclusive'}")  # fmt: skip
                done[o.task] = look
    adapter = [merged("adapter", t, samples[t.name], seconds["adapter"][t.name], done[t.name])
               for t in tasks]  # fmt: skip
    base_outcomes = [
        merged("base", t, [scored[t.name][i] for i in ids[t.name] if i in scored[t.name]],
               seconds["base"][t.name])
        for t in tasks
    ]  # fmt: skip
    return base_outcomes, adapter


def item_ids(task: EvalTask, lines: list[str]) -> list[str]:
    """Each item's id, as `to_sample` names it: the pairing of base and adapter across chunk
    files (whose lm-eval doc ids restart at 0) needs one on every line."""
    ids = []
    for number, line in enumerate(lines, start=1):
        item = json.loads(line)
        if not isinstance(item, dict) or "id" not in item:
            raise EvalError(f"{task.data}: line {number}: no `id` field; sequential evaluation "
                            "pairs base and adapter by item id")  # fmt: skip
        ids.append(str(item["id"]))
    return ids


def merged(
    subject: str, task: EvalTask, samples: list[Sample], seconds: float, look: Look | None = None
) -> EvalOutcome:
    """One task's chunks as one outcome: every metric the mean over all its items."""
    metrics = {m: mean_stderr([s.scores[m] for s in samples]) for m in task.metrics}
    return EvalOutcome(subject, task.name, metrics, len(samples), samples, seconds,
                       task.primary, task.dtype, look)  # fmt: skip
