"""Eval benchmark: the whole gate suite on the embedded SmolLM2, CPU, base model and adapter.

    python bench/eval.py                     # full size: 500 items per general task (~25 min)
    python bench/eval.py --limit 100         # the default pipeline.yaml's size
    python bench/eval.py --limit 40 --batch-sizes 8,16,32 --base-only   # batch-size sweep
    python bench/eval.py --adapter DIR       # a trained adapter instead of a random one
    python bench/eval.py --compare-dtypes    # base model in fp32 and in bf16: agreement, speed
    python bench/eval.py --compare-backends --limit 40   # lm-eval's HF backend vs shared prefix

For each subject (the base model, then base + adapter, merged as the pipeline merges it) it
runs the held-out task (generation + reference log-likelihood, 80 items) and the general
suite (PIQA, ARC-Easy, HellaSwag), with the settings of `pipeline.yaml` unless overridden,
and prints items/s and log-likelihood requests/s per task group, each task's scores with
stderr, the gates' verdicts and the wall time of the whole suite. Without `--adapter` the
adapter is a LoRA with random A and B (`init_lora_weights=False`): it costs what a trained
one costs, and it damages the model, so the general gate should refuse it.

`--compare-dtypes` evaluates the base model's general suite once in fp32 and once in bf16
(emulated where the CPU has no bf16 instructions: correct, only slow) and prints, per task, the
share of items where both pick the same choice, the paired mean difference of the gated metric
with its 95% interval (agreement within noise: the interval holds 0), and the speed-up.

`--compare-backends` scores the same items of each general task with the base model in fp32,
once with lm-eval's HF backend (as `eval.general.backend: lm_eval` runs it) and once with the
shared-prefix backend, one model load, task by task, and prints per task the wall time and
items/s of each, the share of items where both pick the same choice (>= 99.5% required: exit
1 otherwise) and the largest per-choice log-likelihood difference. Every table names the CPU
kind it was measured on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tunegate.config import load_config  # noqa: E402
from tunegate.evaluation.evaluate import (  # noqa: E402
    EvalOutcome,
    evaluate,
    general_tasks,
    heldout_tasks,
    load_model,
    run_tasks,
    to_outcome,
)
from tunegate.models import BaseModel, resolve_base_model  # noqa: E402
from tunegate.precision import cpu_kind  # noqa: E402
from tunegate.release.gates.general_drop import GeneralDrop  # noqa: E402
from tunegate.release.stage import run_gates  # noqa: E402


def random_adapter(base: BaseModel, out: Path, seed: int = 0) -> Path:
    """A LoRA (r=16, all linear layers) with random A and B: a stand-in that hurts the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base.path)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out)
    return out


def run_subject(
    base: BaseModel, adapter: Path | None, tasks: list
) -> tuple[list[EvalOutcome], float]:
    start = time.perf_counter()
    outcomes = evaluate(base, adapter, "base" if adapter is None else "adapter", tasks)
    return outcomes, time.perf_counter() - start


def scores(outcomes: list[EvalOutcome]) -> dict[str, dict[str, list[float | None]]]:
    return {o.task: {m: [v, e] for m, (v, e) in o.metrics.items()} for o in outcomes}


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of b - a over the same items and the half-width of its 95% normal interval."""
    import statistics

    diffs = [y - x for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return mean, 1.96 * sd / len(diffs) ** 0.5


def compare_dtypes(base: BaseModel, config, limit: int) -> dict[str, object]:
    """The base model's general suite in fp32 and in bf16, item by item."""
    metric = config.gates.general.metric
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = config.model_copy(update={"eval": config.eval.model_copy(update={
            "compute_dtype": dtype,
            "general": config.eval.general.model_copy(update={"limit": limit})})})  # fmt: skip
        outcomes, seconds = run_subject(base, None, general_tasks(cfg))
        runs[dtype] = ({o.task: o for o in outcomes}, seconds)
        print(f"   {dtype}: {seconds:.1f} s", flush=True)
    (fp32, fp32_s), (bf16, bf16_s) = runs["float32"], runs["bfloat16"]
    print(f"\nCPU: {cpu_kind()}\n")
    print(f"| task ({metric}) | items | same choice | fp32 | bf16 | bf16 - fp32 (95% CI) |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for task, a in fp32.items():
        b = {s.item_id: s for s in bf16[task].samples}
        pairs = [(s, b[s.item_id]) for s in a.samples]
        same = sum(x.prediction == y.prediction for x, y in pairs) / len(pairs)
        mean, half = paired_difference([x.scores[metric] for x, _ in pairs],
                                       [y.scores[metric] for _, y in pairs])  # fmt: skip
        rows.append({"task": task, "n": len(pairs), "same_choice": same, "diff": mean,
                     "ci": half})  # fmt: skip
        print(f"| {task.removeprefix('tunegate_')} | {len(pairs)} | {same:.1%} | "
              f"{a.metrics[metric][0]:.3f} | {bf16[task].metrics[metric][0]:.3f} | "
              f"{mean:+.4f} ± {half:.4f} |")  # fmt: skip
    items = sum(r["n"] for r in rows)
    print(f"\nwall time (model load included): fp32 {fp32_s:.0f} s ({items / fp32_s:.2f} items/s), "
          f"bf16 {bf16_s:.0f} s ({items / bf16_s:.2f} items/s): bf16 speed-up "
          f"{fp32_s / bf16_s:.2f}x")  # fmt: skip
    return {"cpu": cpu_kind(), "tasks": rows, "fp32_seconds": fp32_s, "bf16_seconds": bf16_s}


def compare_backends(base: BaseModel, config, limit: int) -> dict[str, object]:
    """The base model's general suite with lm-eval's HF backend and the shared-prefix one, fp32,
    the same items, one model load; each task is its own run so its wall time is its own."""
    cfg = config.model_copy(update={"eval": config.eval.model_copy(update={
        "compute_dtype": "float32",
        "general": config.eval.general.model_copy(update={"limit": limit})})})  # fmt: skip
    model, tokenizer = load_model(base.path, None, "float32", cfg)
    print(f"\nCPU: {cpu_kind()}\n")
    print("| task | items | lm_eval s | items/s | shared_prefix s | items/s | speed-up "
          "| same choice | max abs diff loglik |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for task in general_tasks(cfg):
        runs = {}
        for backend in ("lm_eval", "shared_prefix"):
            chosen = replace(task, backend=backend)
            results, seconds = run_tasks(model, tokenizer, [chosen])
            runs[backend] = to_outcome(results, chosen, subject="base", seconds=seconds)
        ref, fast = runs["lm_eval"], runs["shared_prefix"]
        pairs = list(zip(ref.samples, fast.samples, strict=True))
        same = sum(a.prediction == b.prediction for a, b in pairs) / len(pairs)
        diff = max(abs(x - y) for a, b in pairs
                   for x, y in zip(a.choice_logliks, b.choice_logliks, strict=True))  # fmt: skip
        rows.append({"task": task.name, "n": ref.n, "lm_eval_seconds": ref.seconds,
                     "shared_prefix_seconds": fast.seconds, "same_choice": same,
                     "max_loglik_diff": diff})  # fmt: skip
        print(f"| {task.name.removeprefix('tunegate_')} | {ref.n} | {ref.seconds:.1f} | "
              f"{ref.n / ref.seconds:.2f} | {fast.seconds:.1f} | {fast.n / fast.seconds:.2f} | "
              f"{ref.seconds / fast.seconds:.2f}x | {same:.1%} | {diff:.1e} |",
              flush=True)  # fmt: skip
    items = sum(r["n"] for r in rows)
    slow = sum(r["lm_eval_seconds"] for r in rows)
    fast = sum(r["shared_prefix_seconds"] for r in rows)
    same = sum(r["same_choice"] * r["n"] for r in rows) / items
    print(f"\nall tasks: lm_eval {slow:.1f} s ({items / slow:.2f} items/s), shared_prefix "
          f"{fast:.1f} s ({items / fast:.2f} items/s): {slow / fast:.2f}x; same choice "
          f"{same:.1%} ({'ok' if same >= 0.995 else 'BELOW 99.5%'})")  # fmt: skip
    return {"cpu": cpu_kind(), "limit": limit, "tasks": rows, "same_choice": same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "pipeline.yaml"))
    parser.add_argument("--limit", type=int, default=500, help="items per general task")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated sweep (base only)")
    parser.add_argument("--adapter", type=Path, default=None, help="a trained adapter directory")
    parser.add_argument("--base-only", action="store_true")
    parser.add_argument("--no-heldout", action="store_true", help="general suite only")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--compare-dtypes", action="store_true", help="base model in fp32 and bf16, per item"
    )
    parser.add_argument(
        "--compare-backends", action="store_true",
        help="base model, fp32: lm-eval's HF backend vs shared prefix, per item",
    )  # fmt: skip
    args = parser.parse_args()

    config = load_config(args.config)
    base = resolve_base_model(config.model.base_model, config.workspace_dir)
    print(f"CPU: {cpu_kind()}", flush=True)
    if args.compare_dtypes:
        results = compare_dtypes(base, config, args.limit)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    if args.compare_backends:
        results = compare_backends(base, config, args.limit)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0 if results["same_choice"] >= 0.995 else 1
    sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [None]
    results: dict[str, object] = {"limit": args.limit, "runs": []}
    for batch_size in sizes:
        general = config.eval.general.model_copy(update={"limit": args.limit} | (
            {"batch_size": batch_size} if batch_size else {}))  # fmt: skip
        cfg = config.model_copy(
            update={"eval": config.eval.model_copy(update={"general": general})}
        )
        tasks = ([] if args.no_heldout else heldout_tasks(cfg)) + general_tasks(cfg)
        print(f"== batch size {general.batch_size}, {args.limit} items per general task")
        base_out, base_s = run_subject(base, None, tasks)
        run: dict[str, object] = {"batch_size": general.batch_size, "base_seconds": base_s,
                                  "base": scores(base_out)}  # fmt: skip
        print(f"   base: {base_s:.1f} s")
        if not args.base_only:
            with tempfile.TemporaryDirectory(prefix="tunegate-bench-adapter-") as tmp:
                adapter = args.adapter or random_adapter(base, Path(tmp) / "adapter")
                adapter_out, adapter_s = run_subject(base, adapter, tasks)
            judge = GeneralDrop().evaluate if args.no_heldout else run_gates
            gates = judge(cfg, base_out, adapter_out)
            run |= {"adapter_seconds": adapter_s, "adapter": scores(adapter_out),
                    "total_seconds": base_s + adapter_s,
                    "gates": [[g.gate, g.outcome, g.reason] for g in gates]}  # fmt: skip
            print(f"   adapter: {adapter_s:.1f} s; base + adapter {base_s + adapter_s:.1f} s")
            for g in gates:
                print(f"   gate {g.gate}: {g.outcome} ({g.reason})")
        for o in base_out:
            line = ", ".join(f"{m} {v:.3f} ± {e or 0:.3f}" for m, (v, e) in o.metrics.items())
            print(f"   base {o.task} (n={o.n}): {line}")
        results["runs"].append(run)  # type: ignore[union-attr]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
