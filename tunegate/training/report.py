"""The "Training" section of a run report: the loss curve, drawn from the lineage, and the numbers.

The curve is read back from DuckDB (`train_log`, `train_eval_log`), not from the trainer's
memory, so the report shows what the lineage holds, killed-and-resumed runs included.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tunegate.lineage import Lineage
from tunegate.render import markdown_table
from tunegate.training.train import TrainResult

CURVE_FILE = "loss_curve.png"
SHOWN_METRICS = ("first_loss", "last_loss", "last_eval_loss", "trained_tokens", "tokens_per_s",
                 "train_runtime_s", "peak_rss_mb", "rows")  # fmt: skip


def plot_loss_curve(points: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Train loss (and eval loss where measured) against the optimizer step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in a Prefect worker
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for key, label, style in (("loss", "train loss", "-"), ("eval_loss", "eval loss", "o--")):
        xy = [(p["step"], p[key]) for p in points if p.get(key) is not None]
        if xy:
            ax.plot(*zip(*xy, strict=True), style, label=label)
    ax.set(xlabel="step", ylabel="loss (assistant tokens)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def training_section(lineage: Lineage, adapter: TrainResult, report_dir: Path) -> str:
    """Markdown for the run report, with the loss curve written next to it."""
    training_run_id = lineage.adapter(adapter.adapter_id)["training_run_id"]
    points = lineage.loss_curve(training_run_id)
    lines = [f"{adapter.steps} steps, adapter `{adapter.adapter_id[:16]}`"]
    if points:
        plot_loss_curve(points, report_dir / CURVE_FILE, f"training run {training_run_id}")
        lines.append(f"![loss curve]({CURVE_FILE})")
    rows = [(k, adapter.metrics[k]) for k in SHOWN_METRICS
            if k in adapter.metrics and not math.isnan(adapter.metrics[k])]  # fmt: skip
    lines.append(markdown_table(["metric", "value"], rows))
    return "\n\n".join(lines)
