"""Curation and its rows: `curate`, `verdicts` (with the conservation check), `inspect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from tunegate.cli.output import rows_table, unfinished_note
from tunegate.cli.shared import ConfigArg, WorkspaceOpt, checked_config, console, err, lineage_at

if TYPE_CHECKING:
    from tunegate.lineage import Lineage


def curate(config: ConfigArg) -> None:
    """Run curation alone and print the funnel (every row gets a verdict)."""
    cfg = checked_config(config)
    from tunegate.chat import ChatError
    from tunegate.curation.run import CurationError
    from tunegate.runs.curate import curate_to_snapshot
    from tunegate.runs.guard import guard_run, open_lineage

    lineage = open_lineage(cfg)
    run_id = lineage.start_run("curate", cfg.config_hash(), cfg.model_dump_json())
    try:
        with guard_run(lineage, run_id):  # any other error ends the run `failed`, then raises
            curated = curate_to_snapshot(cfg, lineage, run_id)
    except (CurationError, ChatError, OSError) as exc:  # OSError: a full disk (run `failed`)
        err.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)  # paths whole
        raise typer.Exit(1) from None
    result, triage, snap = curated.result, curated.triage, curated.snapshot
    lineage.end_run(run_id, "completed")
    rows = [
        {"verdict": k, "rows": n} for k, n in sorted(result.reasons.items(), key=lambda kv: -kv[1])
    ]
    console.print(rows_table(f"curation {run_id}: {result.n_input} rows", rows))
    from tunegate.curation.report import STAGE_HEADER, stage_rows

    console.print(rows_table("funnel per stage", [dict(zip(STAGE_HEADER, r, strict=True))
                                                  for r in stage_rows(result.stats)]))  # fmt: skip
    if result.report is not None:
        console.print(f"quality report: {result.report}")
    console.print(f"snapshot {snap.snapshot_id} ({len(snap.record_ids)} rows) {snap.path}: "
                  f"tunegate train {config}", soft_wrap=True)  # fmt: skip
    if triage.queued:
        console.print(f"{len(triage.queued)} row(s) wait for review (`review_pending` until "
                      "accepted; not in this snapshot): "
                      f"tunegate review serve --run {run_id}")  # fmt: skip


def verdicts(
    workspace: WorkspaceOpt = Path(".tunegate"),
    run_id: Annotated[str | None, typer.Option("--run", help="Run id (default: latest).")] = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason code.")] = None,
    export: Annotated[
        Path | None,
        typer.Option(help="Write rejected rows as JSONL: reason, detail, the raw row to fix."),
    ] = None,
    limit: int = 50,
) -> None:
    """List row verdicts of a run, or export the rejected rows for fixing."""
    lineage = lineage_at(workspace, read_only=True)
    unfinished = {r["run_id"]: r for r in lineage.unfinished_runs()}
    if run_id is None:  # the latest run that finished: an unfinished one's verdicts are partial
        latest = lineage.latest_finished_run()
        if latest is None:
            err.print("[red]no finished run with verdicts yet[/red]")
            raise typer.Exit(1)
        run_id = latest["run_id"]
        for r in unfinished.values():
            if r["started_at"] > latest["started_at"]:
                err.print(f"note: newer run {r['run_id']} {unfinished_note(r)}; --run to see it",
                          markup=False, soft_wrap=True)  # fmt: skip
    _report_conservation(lineage, run_id, unfinished.get(run_id))
    if export:
        rows = lineage.verdict_rows(run_id, reason, rejected_only=True)
        with export.open("w") as f:
            for r in rows:
                msgs = json.loads(r.pop("messages_json")) if r["messages_json"] else None
                f.write(json.dumps({**r, "messages": msgs}, ensure_ascii=False) + "\n")
        console.print(f"wrote {len(rows)} rejected rows to {export}")
        return
    rows = lineage.verdict_rows(run_id, reason, limit=limit)
    for r in rows:  # the detail names the match; the rest is for --export
        for col in ("messages_json", "stage", "duplicate_of", "cluster_id", "eval_item", "raw"):
            r.pop(col)
    console.print(rows_table(f"verdicts of {run_id}", rows))


def _report_conservation(lineage: Lineage, run_id: str, unfinished: dict[str, Any] | None) -> None:
    """Input rows = accepted + rejected, checked for a finished run, reported for another."""
    status = lineage.run_status(run_id)
    n = lineage.conservation_counts(run_id)
    if unfinished is not None or status == "abandoned":
        err.print(f"WARNING: run {run_id} did not finish ({status}): "
                  f"{n['verdicts']} verdict(s) recorded, input size unknown; not conserved",
                  markup=False, soft_wrap=True)  # fmt: skip
    elif n["rows_in"] is not None and n["rows_in"] != n["verdicts"]:
        err.print(f"WARNING: run {run_id}: {n['rows_in']} rows in, {n['verdicts']} verdicts: "
                  "conservation broken", markup=False, soft_wrap=True)  # fmt: skip


def inspect_cmd(
    row_id: Annotated[str, typer.Argument(help="Record id (a unique prefix is enough).")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML.")] = Path(
        "pipeline.yaml"
    ),
    workspace: Annotated[
        Path | None, typer.Option("--workspace", "-w", help="Default: the config's.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Model directory (default: the config's base model).")
    ] = None,
    ids: Annotated[bool, typer.Option("--ids", help="Print each token's id too.")] = False,
) -> None:
    """Show a row as the trainer sees it: trained tokens in green, token and label counts."""
    from tunegate.chat import ChatError, chat_findings, end_of_turn, load_tokenizer
    from tunegate.curation.checks.template import inspect_row
    from tunegate.lineage import LineageError
    from tunegate.models import config_base_model, resolve_base_model

    cfg = checked_config(config)
    try:
        record = lineage_at(workspace or cfg.workspace_dir).record(row_id)
        model_dir = model or resolve_base_model(config_base_model(cfg), cfg.workspace_dir).path
        tokenizer = load_tokenizer(model_dir, cfg)
        end = end_of_turn(tokenizer, cfg.model.end_of_turn)
    except (LineageError, ChatError) as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    messages = json.loads(record["messages_json"])
    shown = inspect_row(tokenizer, messages, ids, end)
    console.rule(f"record {record['record_id'][:16]} ({record['origin']})")
    console.print(shown.text, highlight=False, markup=False)
    console.rule()
    limit = cfg.train.max_seq_length
    too_long = ", TOO LONG" if shown.n_tokens > limit else ""
    context = shown.n_tokens - shown.n_trained
    console.print(f"tokens {shown.n_tokens} (train.max_seq_length {limit}{too_long}) · "
                  f"trained labels {shown.n_trained} · context only {context}")  # fmt: skip
    for turn in shown.turns:
        stop = "stop token trained" if turn.eos_trained else "[red]stop token NOT trained[/red]"
        console.print(f"  message {turn.message}: tokens {turn.start}-{turn.stop}, "
                      f"{turn.trained} answer tokens trained, {stop}")  # fmt: skip
    console.print(f"end of turn {end.text!r} ({end.source})", highlight=False)
    for finding in chat_findings(tokenizer, end):  # about the model, not this row
        console.print(f"[yellow]model[/yellow] {finding['message']}", highlight=False)
    if shown.error:
        err.print(f"[red]the trainer cannot use this row:[/red] {escape(str(shown.error))}")
        raise typer.Exit(1)
