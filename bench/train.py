"""Training benchmark: tunegate's QLoRA recipe against a plain TRL SFTTrainer script.

    flock /tmp/tunegate-heavy.lock python bench/train.py            # 3 repeats, ~25 min, 2 cores
    python bench/train.py --repeats 1 --steps 8                     # a quick look

Both train the embedded SmolLM2-135M-Instruct on the same rows (the shipped sample
`datasets/raw/*`, curated by `pipeline.yaml`'s funnel), with the same seed, the same rows per
optimizer step and the same number of steps, so they train the same tokens with the same
assistant-only labels. Each run is its own subprocess, so its peak RSS and wall time are its own;
runs alternate (tunegate, baseline, tunegate, ...) so load from other jobs hits both alike.

1. tunegate: `train_adapter` with `pipeline.yaml`'s `lora` and `train` sections, as `make run`
   uses them (padding-free micro-batches with gradient accumulation, label-only LM head,
   NF4, LoRA on all linear layers, checkpoints every 10 steps), except `validation_fraction: 0`
   so both sides train on every row (the eval loss is not training work).
2. baseline: the blog recipe: `BitsAndBytesConfig` NF4 + double quantization,
   `LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])`,
   `SFTConfig` defaults otherwise (batch of 8 padded to its longest row, no packing, TRL's
   default gradient checkpointing). Both sides compute in the same dtype, tunegate's `auto`
   choice on this machine (`tunegate/precision.py`): bf16 (compute dtype, model dtype,
   `bf16=True`) on a CPU with native bf16, fp32 elsewhere, so neither loses for its dtype.

Printed: the CPU kind, trained (non-padding) tokens/s of the training loop, wall time of the
whole process (imports, load, training, save), peak RSS; medians over the repeats, and the
ratios. Model FLOPs utilisation (MFU) relates the trained tokens/s to this machine's measured
matmul peak in that dtype (2048x576 @ 576x1536, SmolLM2's MLP shape, all cores): a token
costs ~4 N FLOPs with N the base model's parameters (forward 2 N; backward 2 N for the input
gradients only, the quantized base being frozen; the LoRA weights' share is negligible).
To bench another tunegate setting, pass JSON overrides in BENCH_TRAIN_OVERRIDES and
BENCH_LORA_OVERRIDES, e.g. `BENCH_LORA_OVERRIDES='{"dropout": 0.05}'`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

BASELINE_ROWS_PER_STEP = 8


from tunegate.precision import cpu_kind  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_dtype() -> str:
    """The dtype both sides train in: tunegate's `auto` choice on this machine."""
    from tunegate.precision import dtype_name, resolve_dtype

    return dtype_name(resolve_dtype("auto", "cpu"))


def matmul_peak_gflops(dtype: str, repeats: int = 20) -> float:
    """Measured matmul throughput in `dtype`: the best of `repeats` (the peak, not the mean)."""
    import torch

    a = torch.randn(2048, 576, dtype=getattr(torch, dtype))
    b = torch.randn(576, 1536, dtype=getattr(torch, dtype))
    a @ b  # warm-up: oneDNN picks and caches its kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048 * 576 * 1536 / best / 1e9


def model_params(model: Path) -> int:
    """Parameters of the base model (read from its safetensors headers, no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for file in model.glob("*.safetensors"):
        with safe_open(file, "np") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += math.prod(f.get_slice(name).get_shape())
    return total


# -- 1. data: the curated sample as a snapshot ------------------------------------------------


def make_snapshot(work: Path) -> tuple[Path, Path]:
    """Curate the shipped sample with pipeline.yaml's funnel; return (snapshot, base model dir)."""
    from tunegate.config import load_config
    from tunegate.curation.run import curate_records
    from tunegate.data.snapshot import write_snapshot
    from tunegate.models import resolve_base_model

    config = load_config(REPO / "pipeline.yaml")
    records = list(curate_records(config).accepted)
    snap = write_snapshot(records, work)
    base = resolve_base_model(config.model.base_model, config.workspace_dir)
    return snap.path, base.path


# -- 2. the two trainers, each run in a child process ----------------------------------------


def run_tunegate(snapshot: str, model: str, steps: int, out: str) -> dict[str, float]:
    from tunegate.config import load_config, parse_config
    from tunegate.models import resolve_base_model
    from tunegate.training.train import train_adapter

    data = load_config(REPO / "pipeline.yaml").model_dump(mode="json")
    data["workspace"] = str(Path(out) / "ws")
    data["train"].update(max_steps=steps, validation_fraction=0.0)
    data["train"].update(json.loads(os.environ.get("BENCH_TRAIN_OVERRIDES", "{}")))
    data["lora"].update(json.loads(os.environ.get("BENCH_LORA_OVERRIDES", "{}")))
    config = parse_config(data, root=REPO)
    base = resolve_base_model(model, Path(out))
    result = train_adapter(config, base, Path(snapshot), Path(out) / "adapter")
    m = result.metrics
    return {
        "trained_tokens": m["trained_tokens"],
        "train_s": m["train_runtime_s"],
        "rows_per_step": config.train.batch_size * config.train.gradient_accumulation_steps,
    }


def run_baseline(snapshot: str, model: str, steps: int, out: str) -> dict[str, float]:
    """What a blog's QLoRA script does, on the same pre-tokenized rows and labels."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from tunegate.data.snapshot import read_snapshot
    from tunegate.training.train import build_dataset

    tokenizer = AutoTokenizer.from_pretrained(model)
    dataset = build_dataset(tokenizer, read_snapshot(Path(snapshot)), max_length=512)
    dtype = getattr(torch, bench_dtype())
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    base = AutoModelForCausalLM.from_pretrained(
        model, quantization_config=bnb, dtype=dtype, device_map="cpu"
    )
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    args = SFTConfig(
        output_dir=out,
        max_steps=steps,
        learning_rate=2e-4,
        logging_steps=1,
        per_device_train_batch_size=BASELINE_ROWS_PER_STEP,
        max_length=512,
        bf16=dtype == torch.bfloat16,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        seed=42,
    )
    trainer = SFTTrainer(
        model=base, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
    )
    metrics = trainer.train().metrics
    trainer.model.save_pretrained(Path(out) / "adapter")
    tokens = next(e["num_tokens"] for e in reversed(trainer.state.log_history) if "num_tokens" in e)
    return {
        "trained_tokens": float(tokens),
        "train_s": float(metrics["train_runtime"]),
        "rows_per_step": BASELINE_ROWS_PER_STEP,
    }


def child(kind: str, snapshot: str, model: str, steps: int) -> None:
    """Entry of a child process: train once, print one JSON line."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-train-{kind}-") as out:
        run = run_tunegate if kind == "tunegate" else run_baseline
        result = run(snapshot, model, steps, out)
    result.update(wall_s=time.perf_counter() - start, peak_rss_mb=peak_rss_mb())
    print("RESULT " + json.dumps(result), flush=True)


def measure(kind: str, snapshot: Path, model: Path, steps: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", kind, str(snapshot), str(model), str(steps)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["tokens_per_s"] = result["trained_tokens"] / result["train_s"]
    print(
        f"  {kind:9s} {result['tokens_per_s']:7.1f} tokens/s  {result['train_s']:7.1f} s training"
        f"  {result['wall_s']:7.1f} s wall  {result['peak_rss_mb']:7.0f} MB peak RSS"
        f"  ({result['trained_tokens']:.0f} tokens)",
        flush=True,
    )
    return result


# -- 3. the table --------------------------------------------------------------------------------


def table(
    runs: dict[str, list[dict[str, float]]], steps: int, dtype: str, peak: float, params: int
) -> str:
    med = {k: {m: statistics.median(r[m] for r in rs) for m in rs[0]} for k, rs in runs.items()}
    t, b = med["tunegate"], med["baseline"]
    n = len(runs["tunegate"])
    mfu = {k: 4 * params * r["tokens_per_s"] / 1e9 / peak for k, r in med.items()}
    lines = [
        f"CPU: {cpu_kind()}; both sides {dtype}; measured {dtype} matmul peak {peak:,.0f} GFLOP/s",
        "",
        f"| {steps} steps x {int(t['rows_per_step'])} rows, median of {n} | tunegate | "
        "plain TRL | tunegate / TRL |",
        "|---|---:|---:|---:|",
        f"| trained tokens | {t['trained_tokens']:.0f} | {b['trained_tokens']:.0f} | "
        f"{t['trained_tokens'] / b['trained_tokens']:.2f} |",
        f"| trained tokens/s (training loop) | {t['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} | "
        f"**{t['tokens_per_s'] / b['tokens_per_s']:.2f}x** |",
        f"| training loop (s) | {t['train_s']:.0f} | {b['train_s']:.0f} | "
        f"{t['train_s'] / b['train_s']:.2f} |",
        f"| wall time, whole process (s) | {t['wall_s']:.0f} | {b['wall_s']:.0f} | "
        f"{t['wall_s'] / b['wall_s']:.2f} |",
        f"| peak RSS (MB) | {t['peak_rss_mb']:.0f} | {b['peak_rss_mb']:.0f} | "
        f"**{t['peak_rss_mb'] / b['peak_rss_mb']:.2f}x** |",
        f"| MFU (4 N FLOPs per token / {dtype} matmul peak) | {mfu['tunegate']:.1%} | "
        f"{mfu['baseline']:.1%} | {mfu['tunegate'] / mfu['baseline']:.2f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, medians reported")
    parser.add_argument(
        "--child", nargs=4, metavar=("KIND", "SNAPSHOT", "MODEL", "STEPS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        kind, snapshot, model, steps = args.child
        child(kind, snapshot, model, int(steps))
        return
    dtype = bench_dtype()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        snapshot, model = make_snapshot(Path(work))
        rows = sum(1 for _ in snapshot.open())
        params = model_params(model)
        print(
            f"{rows} curated rows, {args.steps} steps, {args.repeats} repeat(s), "
            f"{os.cpu_count()} CPUs, {dtype}; CPU: {cpu_kind()}",
            flush=True,
        )
        runs: dict[str, list[dict[str, float]]] = {"tunegate": [], "baseline": []}
        for _ in range(args.repeats):
            for kind in runs:
                runs[kind].append(measure(kind, snapshot, model, args.steps))
    peak = matmul_peak_gflops(dtype)
    print()
    print(table(runs, args.steps, dtype, peak, params))


if __name__ == "__main__":
    main()
