"""Gate power: which planted degradations each per-item score lets the general gate detect.

    python bench/gate_power.py                        # pipeline.yaml's size (eval.general.limit)
    python bench/gate_power.py --limit 100 --adapters noop,0.25,1,4
    python bench/gate_power.py --adapters shuffled    # a LoRA trained on shuffled labels

Evaluates the base model's general suite once, then base + each planted adapter:
- `noop`: peft's own init (B = 0): adapter = base, must pass;
- a number: a LoRA with random A and B on every linear layer at that scale (`lora_alpha / r`:
  the larger, the more damage);
- `shuffled`: a LoRA trained as `make run` trains (pipeline.yaml's `lora` and `train`), on the
  curated sample with the answers permuted across prompts (seeded): what a broken join or an
  off-by-one in a data export trains.
For each and each score (p_gold, acc, acc_norm) it prints the paired mean change, its one-sided
95% bounds and the gate's outcome (pass / FAIL / inconclusive) at `gates.general.max_drop`, plus
the standard deviation of the per-item difference, which sets the items a decision needs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tunegate.config import PipelineConfig, load_config  # noqa: E402
from tunegate.evaluation.evaluate import EvalOutcome, evaluate, general_tasks  # noqa: E402
from tunegate.models import BaseModel, resolve_base_model  # noqa: E402
from tunegate.precision import cpu_kind  # noqa: E402
from tunegate.release.gates.general_drop import general_drop_gate  # noqa: E402

SCORES = ("p_gold", "acc", "acc_norm")


def lora(base: BaseModel, out: Path, scale: float, seed: int = 0) -> Path:
    """A LoRA (r=16, all linear layers): random A and B at `scale` = alpha / r, or, at
    scale 0, peft's own init (B = 0): a no-op, the adapter = base case."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base.path)
    config = LoraConfig(r=16, lora_alpha=16 if scale == 0 else scale * 16,
                        target_modules="all-linear", init_lora_weights=scale == 0)  # fmt: skip
    get_peft_model(model, config).save_pretrained(out)
    return out


def shuffled_labels_lora(config: PipelineConfig, base: BaseModel, out: Path, seed: int = 0) -> Path:
    """A LoRA trained with `config`'s recipe on its curated data, each row's last answer given to
    another row's prompt (a seeded permutation of the answers)."""
    from tunegate.curation.run import curate_records
    from tunegate.data.snapshot import read_snapshot, write_snapshot
    from tunegate.training.train import train_adapter

    snapshot = write_snapshot(list(curate_records(config).accepted), out / "snapshot").path
    rows = read_snapshot(snapshot)
    answers = [messages[-1]["content"] for messages in rows]
    random.Random(seed).shuffle(answers)
    for messages, answer in zip(rows, answers, strict=True):
        messages[-1]["content"] = answer
    shuffled = out / "shuffled.jsonl"
    shuffled.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows), encoding="utf-8")
    workspace = config.model_copy(update={"workspace": str(out / "ws")})
    start = time.perf_counter()
    train_adapter(workspace, base, shuffled, out / "adapter")
    print(f"shuffled-labels LoRA trained: {len(rows)} rows, {time.perf_counter() - start:.0f} s",
          flush=True)  # fmt: skip
    return out / "adapter"


def planted(name: str, config: PipelineConfig, base: BaseModel, out: Path) -> tuple[str, Path]:
    """One planted adapter of `--adapters` (`noop`, `shuffled` or a random LoRA's scale):
    its label and directory."""
    if name == "shuffled":
        return "LoRA, shuffled labels", shuffled_labels_lora(config, base, out)
    scale = 0.0 if name == "noop" else float(name)
    label = "no-op (B = 0)" if scale == 0 else f"random LoRA x{scale:g}"
    return label, lora(base, out, scale)


def per_item(o: EvalOutcome, metric: str) -> dict[str, float]:
    return {s.item_id: s.scores[metric] for s in o.samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "pipeline.yaml"))
    parser.add_argument("--limit", type=int, default=None, help="items per task (config's)")
    parser.add_argument(
        "--adapters",
        default="noop,0.125,0.25,0.5,1",
        help="comma-separated: noop, shuffled, or a random LoRA's alpha / r",
    )
    parser.add_argument("--tasks", default=None, help="comma-separated (config's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config = load_config(args.config)
    general: dict[str, object] = {}
    if args.limit:
        general["limit"] = args.limit
    if args.tasks:
        general["tasks"] = args.tasks.split(",")
    config = config.model_copy(update={"eval": config.eval.model_copy(update={
        "general": config.eval.general.model_copy(update=general)})})  # fmt: skip
    base = resolve_base_model(config.model.base_model, config.workspace_dir)
    tasks = general_tasks(config)
    gate_config = config.gates.general
    print(f"# {cpu_kind()}; {len(tasks)} tasks x {config.eval.general.limit} items; margin "
          f"{gate_config.max_drop}, {gate_config.confidence:.0%} one-sided")  # fmt: skip
    start = time.perf_counter()
    before = evaluate(base, None, "base", tasks)
    print(f"base: {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for which in args.adapters.split(","):
            start = time.perf_counter()
            name, adapter = planted(which, config, base, Path(tmp) / which)
            after = evaluate(base, adapter, "adapter", tasks)
            for b, a in zip(before, after, strict=True):
                task = b.task.removeprefix("tunegate_")
                for metric in SCORES:
                    cfg = gate_config.model_copy(update={"metric": metric})
                    g = general_drop_gate(task, per_item(b, metric), per_item(a, metric), cfg)
                    diffs = [
                        a_ - b_
                        for a_, b_ in zip(
                            per_item(a, metric).values(), per_item(b, metric).values(), strict=True
                        )
                    ]
                    mean = sum(diffs) / len(diffs)
                    sd = (sum((d - mean) ** 2 for d in diffs) / max(len(diffs) - 1, 1)) ** 0.5
                    rows.append({"adapter": name, "task": task, "metric": metric, "n": g.n,
                                 "change": mean, "low": g.low, "high": g.high, "sd": sd,
                                 "outcome": g.outcome})  # fmt: skip
                    print(f"{name:>20} {task:>9} {metric:>8}: change {mean:+.3f} "
                          f"[{g.low:+.3f}, {g.high:+.3f}] sd {sd:.3f} -> {g.outcome}",
                          flush=True)  # fmt: skip
            print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
