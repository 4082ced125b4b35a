"""The eval report: `reports/<run id>/eval.html`, base model vs adapter, one self-contained page.

What a release reviewer reads before trusting a promotion: the decision banner with every
gate's verdict and reason; per task and metric, base and adapter with confidence intervals
and the paired change (the interval the general gate reads); a chart of the same; and, per
task, the items where the adapter wins and where it loses, side by side with the base
model's answer. The table rows are also what the flow publishes as a Prefect table artifact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.evaluation.evaluate import EvalOutcome, Sample
from tunegate.evaluation.stats import Interval, mean_interval, paired_difference
from tunegate.release.gates import GateResult
from tunegate.release.registry import Decision
from tunegate.render import Cell, clip, html_page, html_table, png_img
from tunegate.render import escape as _e

# 0..1: one chart axis
SHARES = ("field_accuracy", "json_valid", "exact_match", "acc", "acc_norm", "p_gold")

_OUTCOME_CLASS = {"pass": "ok", "fail": "bad", "inconclusive": "warn"}


@dataclass(frozen=True)
class MetricRow:
    """One task and metric: both subjects with intervals, and the paired change."""

    task: str
    metric: str
    n: int
    base: Interval
    adapter: Interval
    change: Interval  # paired bootstrap of adapter - base

    def as_dict(self) -> dict[str, Any]:
        """The row as the Prefect table artifact shows it."""

        def ci(i: Interval) -> str:
            return f"{i.mean:.3f} [{i.low:.3f}, {i.high:.3f}]"

        return {"task": self.task, "metric": self.metric, "n": self.n,
                "base": ci(self.base), "adapter": ci(self.adapter),
                "change": f"{self.change.mean:+.3f} [{self.change.low:+.3f}, "
                          f"{self.change.high:+.3f}]"}  # fmt: skip


def metric_rows(
    base_evals: Sequence[EvalOutcome], adapter_evals: Sequence[EvalOutcome],
    confidence: float = 0.95,
) -> list[MetricRow]:  # fmt: skip
    """Per task and metric, intervals from the per-sample scores (same items, paired)."""
    adapter_by_task = {o.task: o for o in adapter_evals}
    rows = []
    for b in base_evals:
        a = adapter_by_task.get(b.task)
        if a is None:
            continue
        base_items = {s.item_id: s.scores for s in b.samples}
        adapter_items = {s.item_id: s.scores for s in a.samples}
        items = sorted(set(base_items) & set(adapter_items))
        if not items:
            continue
        for metric in b.metrics:
            xb = [base_items[i][metric] for i in items]
            xa = [adapter_items[i][metric] for i in items]
            bounds = (0.0, 1.0) if metric in SHARES else (-math.inf, math.inf)
            rows.append(MetricRow(b.task.removeprefix("tunegate_"), metric, len(items),
                                  mean_interval(xb, confidence, bounds),
                                  mean_interval(xa, confidence, bounds),
                                  paired_difference(xb, xa, confidence)))  # fmt: skip
    return rows


def _ci(i: Interval, signed: bool = False) -> str:
    f = "+.3f" if signed else ".3f"
    return f"{i.mean:{f}} <span class=muted>[{i.low:{f}}, {i.high:{f}}]</span>"


def ci_chart(rows: Sequence[MetricRow]) -> str:
    """Base and adapter with their intervals, one line per task's primary metric (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.0))
    for k, row in enumerate(reversed(rows)):
        for offset, (label, i, color) in enumerate(
            (("base", row.base, "#8a94a6"), ("adapter", row.adapter, "#2458d6"))
        ):
            y = k + (0.15 if offset == 0 else -0.15)
            ax.errorbar(i.mean, y, xerr=[[i.mean - i.low], [i.high - i.mean]], fmt="o",
                        color=color, label=label if k == 0 else None, capsize=3)  # fmt: skip
    ax.set_yticks(range(len(rows)), [f"{r.task} {r.metric}" for r in reversed(rows)])
    ax.set_xlabel(f"score ({rows[0].base.confidence:.0%} interval)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return png_img(fig, "scores")


def _examples(base: EvalOutcome, adapter: EvalOutcome, per_side: int) -> str:
    """Items where the adapter's primary score beats the base model's, and where it trails."""
    by_id = {s.item_id: s for s in base.samples}
    pairs = [(by_id[s.item_id], s) for s in adapter.samples if s.item_id in by_id]

    def gain(pair: tuple[Sample, Sample]) -> float:
        return pair[1].score - pair[0].score

    # Largest differences first, ties in item order.
    wins = sorted((p for p in pairs if gain(p) > 0), key=lambda p: (-gain(p), p[0].item_id))
    losses = sorted((p for p in pairs if gain(p) < 0), key=lambda p: (gain(p), p[0].item_id))
    same = len(pairs) - len(wins) - len(losses)
    parts = [
        f"<p class=muted>{len(wins)} items better with the adapter, {len(losses)} worse, "
        f"{same} unchanged ({adapter.primary}).</p>"
    ]
    for title, chosen in (("adapter wins", wins[:per_side]), ("adapter loses", losses[:per_side])):
        parts.append(f"<h4>{title}</h4>" if chosen else f"<h4>{title}: none</h4>")
        for b, a in chosen:
            parts.append(
                f"<div class=pair><div class=card><b>{_e(b.item_id)}</b>"
                f"<pre>{_e(clip(b.prompt, 900))}</pre>"
                f"reference<pre>{_e(clip(b.target, 900))}</pre></div>"
                f"<div class=card><b>base</b> {b.score:.3f}"
                f"<pre>{_e(clip(b.prediction, 900))}</pre></div>"
                f"<div class=card><b>adapter</b> {a.score:.3f}"
                f"<pre>{_e(clip(a.prediction, 900))}</pre></div></div>"
            )
    return "".join(parts)


def _items(g: GateResult) -> str:
    """Items a decision used; a sequential one says where it stopped: "200 of 500, look 2/5"."""
    if g.look is None:
        return str(g.n)
    return f"{g.n} of {g.look.full}, look {g.look.index}/{g.look.looks}"


def write_eval_report(
    reports_dir: Path,
    run_id: str,
    adapter_id: str,
    base_evals: Sequence[EvalOutcome],
    adapter_evals: Sequence[EvalOutcome],
    gates: Sequence[GateResult],
    decision: Decision,
    confidence: float = 0.95,
    per_side: int = 5,
) -> Path:
    """Write `reports/<run id>/eval.html` and return its path."""
    rows = metric_rows(base_evals, adapter_evals, confidence)
    dtypes = ", ".join(sorted({o.dtype for o in (*base_evals, *adapter_evals)}))
    ok = decision.promoted
    word = {"promoted": "PROMOTED", "forced": "FORCED"}.get(decision.decision, "REFUSED")
    parts = [
        f"<h1>Eval report · run {_e(run_id)}</h1>",
        f"<div class='banner {'ok' if ok else 'bad'}'><b>{word}</b> adapter "
        f"<code>{_e(adapter_id[:16])}</code> → <code>{_e(decision.alias)}</code><br>"
        f"<span class=muted>{_e(decision.reason)}</span></div>",
        "<h2>Gates</h2><p class=muted>pass: the whole one-sided confidence interval clears the "
        "threshold; FAIL: it lies wholly beyond it; inconclusive: it straddles it (too few "
        "items to tell). Only pass releases, unless the alias's policy accepts inconclusive. "
        "A general task evaluated sequentially stops at the first look where its gate is "
        "conclusive; its items say where (README \"Evaluation and gates\")."
        "</p>",
        html_table(["gate", "outcome", "value", "threshold", "items", "reason"], [
            (_e(g.gate),
             Cell("FAIL" if g.outcome == "fail" else g.outcome, _OUTCOME_CLASS[g.outcome]),
             f"{g.value:+.3f}", f"{g.threshold:+.3f}", _items(g), _e(g.reason)) for g in gates
        ], numeric=(2, 3, 4)),
        f"<h2>Base vs adapter</h2><p class=muted>Means with {confidence:.0%} intervals "
        "(normal approximation); the change is adapter − base over the same items with a "
        f"paired-bootstrap interval. Both subjects computed in {_e(dtypes)}.</p>",
        html_table(["task", "metric", "n", "base", "adapter", "change"], [
            (_e(r.task), _e(r.metric), r.n, _ci(r.base), _ci(r.adapter),
             _ci(r.change, signed=True)) for r in rows
        ], numeric=(2, 3, 4, 5)),
    ]  # fmt: skip
    primaries = {o.task.removeprefix("tunegate_"): o.primary for o in base_evals}
    charted = [r for r in rows if primaries.get(r.task) == r.metric and r.metric in SHARES]
    if charted:
        parts.append(ci_chart(charted))
    parts.append("<h2>Where the adapter wins and loses</h2>")
    adapter_by_task = {o.task: o for o in adapter_evals}
    for b in base_evals:
        if b.task in adapter_by_task:
            parts.append(f"<h3>{_e(b.task.removeprefix('tunegate_'))}</h3>")
            parts.append(_examples(b, adapter_by_task[b.task], per_side))
    out = reports_dir / run_id
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.html"
    path.write_text(html_page(f"eval {run_id}", "".join(parts)))
    return path
