"""The gated pipeline flow: raw data in, a promoted (or refused) adapter out.

Run locally (Prefect's temporary server, no setup):   tunegate run pipeline.yaml
Deploy with a schedule:                                prefect deploy --all
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError

from flows.notify import announce_run
from flows.review import close_review_queue, triage_synthetic, wait_for_review
from tunegate.chat import load_tokenizer
from tunegate.config import ConfigError, PipelineConfig, load_config
from tunegate.curation.report import stage_funnel_markdown
from tunegate.curation.run import CurationResult, curate
from tunegate.data.snapshot import Snapshot, snapshot_records
from tunegate.evaluation.evaluate import EvalOutcome
from tunegate.evaluation.stage import evaluate_general_recorded, evaluate_recorded
from tunegate.faults import fault_point
from tunegate.lineage import Lineage, now
from tunegate.models import BaseModel, prepare_base_model
from tunegate.release.gates import GateResult
from tunegate.release.promote import Decision
from tunegate.release.report import metric_rows, write_eval_report
from tunegate.release.stage import gate_and_promote, gate_summary
from tunegate.runlog import rate, say, stage_line
from tunegate.runs.guard import Heartbeat, open_lineage
from tunegate.runs.history import run_history
from tunegate.runs.preflight import check_sources, record_failed_start
from tunegate.runs.summary import (
    funnel_markdown,
    gates_markdown,
    metrics_markdown,
    summarize,
    write_report,
)
from tunegate.runs.trends import trends_markdown, write_trends
from tunegate.training.report import training_section
from tunegate.training.stage import train_recorded
from tunegate.training.train import TrainResult


def _log(message: str) -> None:
    """To the flow run's log (Prefect UI, `prefect flow-run logs`); plain logging outside one."""
    try:
        get_run_logger().info(message)
    except MissingContextError:
        logging.getLogger("tunegate").info(message)


def _stage(lineage: Lineage, run_id: str, stage: str, started: datetime, **metrics: object) -> None:
    lineage.record_stage(run_id, stage, started, "completed", metrics)


def _seconds(started: datetime) -> float:
    return (now() - started).total_seconds()


@task(cache_policy=NO_CACHE)
def curate_data(
    config: PipelineConfig, lineage: Lineage, run_id: str, base: BaseModel
) -> CurationResult:
    """Ingest, contract, dedup, then the chat-template gate with the base tokenizer."""
    started = now()
    result = curate(config, lineage, run_id, tokenizer=load_tokenizer(base.path, config))
    _stage(lineage, run_id, "curate", started, rows=result.n_input, accepted=len(result.accepted))
    rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(result.reasons.items())
                         if reason != "accepted")  # fmt: skip
    seconds = _seconds(started)
    say(stage_line("curate", f"{result.n_input:,} rows -> {len(result.accepted):,} accepted, "
                   f"{result.n_input - len(result.accepted):,} rejected ({rejected or 'none'}) "
                   f"in {seconds:.1f} s, {rate(result.n_input, seconds, 'rows')}"))  # fmt: skip
    create_markdown_artifact(
        funnel_markdown(result.n_input, result.reasons) + "\n\n"
        + stage_funnel_markdown(result.stats, result.report),
        key="curation-funnel", description="Rows in, accepted and rejected per stage and reason",
    )  # fmt: skip
    return result


@task(cache_policy=NO_CACHE)
def snapshot_data(
    config: PipelineConfig, lineage: Lineage, run_id: str, result: CurationResult
) -> Snapshot:
    """Write the accepted rows as a hashed snapshot."""
    started = now()
    snap = snapshot_records(config, lineage, run_id, result.accepted)
    _stage(
        lineage,
        run_id,
        "snapshot",
        started,
        snapshot_id=snap.snapshot_id,
        rows=len(snap.record_ids),
    )
    say(stage_line("snapshot", f"{snap.snapshot_id[:12]}: {len(snap.record_ids):,} rows"))
    return snap


@task(cache_policy=NO_CACHE, retries=1)
def load_base_model(config: PipelineConfig, lineage: Lineage) -> BaseModel:
    """Resolve the base model (de-quantizing the embedded GGUF once)."""
    started = now()
    base = prepare_base_model(config, lineage)
    say(stage_line("base", f"{base.ref} ({base.sha256[:12]}) ready in {_seconds(started):.1f} s"))
    return base


@task(cache_policy=NO_CACHE)
def train_qlora(
    config: PipelineConfig, lineage: Lineage, run_id: str, base: BaseModel, snap: Snapshot
) -> TrainResult:
    """QLoRA-train an adapter on the snapshot."""
    started = now()
    result = train_recorded(config, lineage, run_id, base, snap)
    _stage(lineage, run_id, "train", started, adapter_id=result.adapter_id, **result.metrics)
    m = result.metrics
    say(stage_line("train", f"{result.steps} steps, loss {m['first_loss']:.3f} -> "
                   f"{m['last_loss']:.3f}, {m['tokens_per_s']:.0f} tokens/s, adapter "
                   f"{result.adapter_id[:12]} in {_seconds(started) / 60:.1f} min"))  # fmt: skip
    create_table_artifact([{"metric": k, "value": v} for k, v in result.metrics.items()],
                          key="training-metrics", description="QLoRA training")  # fmt: skip
    return result


@task(cache_policy=NO_CACHE)
def evaluate_heldout(
    config: PipelineConfig, lineage: Lineage, run_id: str, base: BaseModel,
    adapter: TrainResult | None,
) -> list[EvalOutcome]:  # fmt: skip
    """Held-out task (generation + reference log-likelihood) of the base model or the adapter."""
    started = now()
    outcomes = evaluate_recorded(config, lineage, run_id, base, adapter, "heldout")
    subject = "base" if adapter is None else "adapter"
    items, seconds = sum(o.n for o in outcomes), _seconds(started)  # model loading included
    dtype = outcomes[0].dtype if outcomes else "-"
    done = (f"in {seconds:.1f} s, {rate(items, seconds, 'items')}"
            if any(o.seconds for o in outcomes)
            else "reused from an earlier run (same cache key)")  # fmt: skip
    say(stage_line("eval", f"heldout {subject}: {items:,} items ({dtype}) {done}"))
    _stage(lineage, run_id, f"eval_heldout_{subject}", started, n={o.task: o.n for o in outcomes},
           seconds={o.task: o.seconds for o in outcomes})  # fmt: skip
    return outcomes


@task(cache_policy=NO_CACHE)
def evaluate_general(
    config: PipelineConfig, lineage: Lineage, run_id: str, base: BaseModel, adapter: TrainResult
) -> tuple[list[EvalOutcome], list[EvalOutcome]]:
    """General-capability suite (PIQA, ARC-Easy, HellaSwag) of base and adapter, paired: with
    sequential evaluation both stop a task once its gate is conclusive."""
    started = now()
    base_outcomes, adapter_outcomes = evaluate_general_recorded(config, lineage, run_id, base,
                                                                adapter)  # fmt: skip
    seconds = _seconds(started)  # model loading included
    if adapter_outcomes:
        n_base, n_adapter = (sum(o.n for o in base_outcomes),
                             sum(o.n for o in adapter_outcomes))  # fmt: skip
        stops = ", ".join(f"{o.task.removeprefix('tunegate_')} {o.look.n} of {o.look.full}"
                          for o in adapter_outcomes if o.look)  # fmt: skip
        say(stage_line("eval", f"general: base {n_base:,} + adapter {n_adapter:,} items "
                       f"({adapter_outcomes[0].dtype}) in {seconds:.1f} s"
                       + (f"; the adapter stopped at {stops}" if stops else "")))  # fmt: skip
    _stage(lineage, run_id, "eval_general", started, seconds=seconds,
           n={f"{o.subject}:{o.task}": o.n for o in base_outcomes + adapter_outcomes})  # fmt: skip
    return base_outcomes, adapter_outcomes


@task(cache_policy=NO_CACHE)
def gate_adapter(
    config: PipelineConfig, lineage: Lineage, run_id: str, adapter: TrainResult,
    base_evals: list[EvalOutcome], adapter_evals: list[EvalOutcome],
) -> tuple[list[GateResult], Decision]:  # fmt: skip
    """Run every gate (held-out gain, no forgetting per general task); promote or refuse."""
    started = now()
    gates, decision = gate_and_promote(config, lineage, run_id, adapter, base_evals,
                                              adapter_evals)  # fmt: skip
    _stage(lineage, run_id, "gate", started, promoted=decision.promoted, reason=decision.reason)
    banner = "PROMOTED" if decision.promoted else "REFUSED"
    say(stage_line("gates", f"{gate_summary(gates, decision.promoted)}: {banner.lower()} "
                   f"{decision.adapter_id[:12]} -> {decision.alias}"))  # fmt: skip
    create_markdown_artifact(
        f"# {banner} `{decision.adapter_id[:12]}` → `{decision.alias}`\n\n{decision.reason}\n\n"
        + gates_markdown(gates),
        key="promotion-gate", description="Gates and promotion decision",
    )  # fmt: skip
    return gates, decision


@task(cache_policy=NO_CACHE)
def report_evals(
    config: PipelineConfig, run_id: str, adapter: TrainResult, base_evals: list[EvalOutcome],
    adapter_evals: list[EvalOutcome], gates: list[GateResult], decision: Decision,
) -> Path:  # fmt: skip
    """Write reports/<run id>/eval.html and publish its table as an artifact."""
    confidence = config.gates.general.confidence
    path = write_eval_report(config.resolve("reports"), run_id, adapter.adapter_id, base_evals,
                             adapter_evals, gates, decision, confidence)  # fmt: skip
    create_table_artifact([r.as_dict() for r in metric_rows(base_evals, adapter_evals, confidence)],
                          key="eval-base-vs-adapter",
                          description=f"Base vs adapter per task and metric ({path})")  # fmt: skip
    return path


def publish_trends(config: PipelineConfig, lineage: Lineage) -> None:
    """Rewrite reports/trends.html (every night, change flags) and, in a flow run, its artifact
    (outside one, an artifact would start a temporary server just to be dropped)."""
    nights = run_history(lineage)
    path = write_trends(config.resolve("reports"), nights)
    if FlowRunContext.get() is not None:
        create_markdown_artifact(
            trends_markdown(nights),
            key="nightly-trends",
            description=f"Nights side by side, what changed ({path})",
        )


# log_prints stays off: dill (used by `datasets` to fingerprint map functions) disassembles
# them to a captured stdout, and a print-to-log patch would flood the run log with bytecode.
@flow(name="tunegate-pipeline", log_prints=False)
def pipeline(config_path: str = "pipeline.yaml", run_id: str | None = None) -> dict[str, object]:
    """Base model → curate (template gate) → synthetic review → snapshot → QLoRA → eval → gate.

    `run_id`: the id to record the run under (`tunegate run` names its log file after it).
    """
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        failed = record_failed_start("pipeline", config_path, exc)  # every night leaves a row
        if failed is not None:
            announce_run(failed.run_id, "failed", failed.detail, config_path, failed.lineage)
        raise
    lineage = open_lineage(config)
    run_id = lineage.start_run("pipeline", config.config_hash(), config.model_dump_json(), run_id)
    _log(f"lineage run {run_id} in {lineage.path}")
    Heartbeat(lineage, run_id).start()  # beats until the run ends: another host can tell it lives
    try:
        check_sources(config, config_path)  # a moved file fails here, before the model loads
        base = load_base_model(config, lineage)  # first: curation renders rows with its template
        curation = curate_data(config, lineage, run_id, base)
        triage = triage_synthetic(config, lineage, run_id, curation, base)
        why = wait_for_review(config, lineage, run_id)  # pauses while rows wait for a human
        curation = close_review_queue(config, lineage, run_id, triage, base, why)
        fault_point("curated")  # the kill points of tests/runs/test_pipeline_faults.py
        snap = snapshot_data(config, lineage, run_id, curation)
        fault_point("snapshot")
        adapter = train_qlora(config, lineage, run_id, base, snap)  # + `checkpoint_saved`
        fault_point("adapter_recorded")
        base_evals = evaluate_heldout(config, lineage, run_id, base, None)
        fault_point("base_evals")
        adapter_evals = evaluate_heldout(config, lineage, run_id, base, adapter)
        general_base, general_adapter = evaluate_general(config, lineage, run_id, base, adapter)
        base_evals, adapter_evals = base_evals + general_base, adapter_evals + general_adapter
        fault_point("adapter_evals")
        gates, decision = gate_adapter(config, lineage, run_id, adapter, base_evals, adapter_evals)
        fault_point("gates_recorded")
        eval_report = report_evals(config, run_id, adapter, base_evals, adapter_evals, gates,
                                   decision)  # fmt: skip
    except BaseException as exc:
        detail = f"{type(exc).__name__}: {exc}"
        lineage.end_run(run_id, "failed", detail)
        announce_run(run_id, "failed", detail, config.name, lineage.path)
        try:
            publish_trends(config, lineage)
        except Exception as trends_exc:  # the run's own error is the one to raise
            _log(f"could not update the trends report: {trends_exc!r}")
        raise
    report = write_report(config.resolve("reports"), run_id, {
        "Curation": funnel_markdown(curation.n_input, curation.reasons),
        "Training": training_section(lineage, adapter, config.resolve("reports") / run_id),
        "Evals (base vs adapter)": "\n\n".join(
            f"**{b.task}**\n\n" + metrics_markdown(b.metrics, a.metrics)
            for b, a in zip(base_evals, adapter_evals, strict=True)) + f"\n\nReport: {eval_report}",
        "Gates": gates_markdown(gates),
        "Decision": f"**{'promoted' if decision.promoted else 'refused'}** "
                    f"`{decision.adapter_id}` → `{decision.alias}`: {decision.reason}",
    })  # fmt: skip
    status = "promoted" if decision.promoted else "refused"
    lineage.end_run(run_id, status, decision.reason)
    announce_run(run_id, status, decision.reason, config.name, lineage.path)
    publish_trends(config, lineage)
    summary = summarize(run_id, curation, config, base_evals, adapter_evals, decision,
                               Path(report), eval_report, gates)  # fmt: skip
    return asdict(summary)


if __name__ == "__main__":
    import sys

    print(pipeline(sys.argv[1] if len(sys.argv) > 1 else "pipeline.yaml"))
