"""The `tunegate` command line: one subcommand per stage plus lineage queries."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tunegate.config import ConfigError, PipelineConfig, load_config

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console()
err = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="Pipeline YAML.")]
WorkspaceOpt = Annotated[
    Path, typer.Option("--workspace", "-w", help="Workspace holding lineage.duckdb.")
]

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # nothing downloads at run time
    os.environ.setdefault(var, "1")
# Nor phones home: offline, Prefect's telemetry would log an ERROR on every temporary server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _config(path: Path) -> PipelineConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]invalid config[/red] {exc}")
        raise typer.Exit(1) from None


def _lineage(workspace: Path):
    from tunegate.lineage import Lineage

    db = workspace / "lineage.duckdb"
    if not db.is_file():
        err.print(f"[red]no lineage database at {db}[/red] (run `tunegate run` first)")
        raise typer.Exit(1)
    return Lineage(db)


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    """Rows as a table; a value too wide for its column (a path, an id) is folded, never cut."""
    table = Table(title=title, title_justify="left")
    for col in rows[0] if rows else []:
        table.add_column(str(col), overflow="fold")
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    return table


@app.command()
def validate(config: ConfigArg) -> None:
    """Check a pipeline YAML; every bad key is reported with its path and reason."""
    cfg = _config(config)
    console.print(f"[green]ok[/green] {config} (config hash {cfg.config_hash()[:16]})")


@app.command()
def run(config: ConfigArg = Path("pipeline.yaml")) -> None:
    """Run the whole gated pipeline as a Prefect flow (temporary local server)."""
    _config(config)  # fail fast, before Prefect starts
    from flows.pipeline import pipeline

    summary = pipeline(str(config))
    rows = summary["rows"]
    held = summary["heldout"]
    table = Table(title=f"tunegate run {summary['run_id']}", title_justify="left")
    table.add_column("")
    table.add_column("")
    table.add_row(
        "rows in / accepted / rejected", f"{rows['in']} / {rows['accepted']} / {rows['rejected']}"
    )
    table.add_row(
        f"held-out {held['metric']} base → adapter", f"{held['base']:.3f} → {held['adapter']:.3f}"
    )
    for task, score in summary["general"].items():
        table.add_row(f"{task} base → adapter", f"{score['base']:.3f} → {score['adapter']:.3f}")
    table.add_row("gate", summary["gate"])
    table.add_row("decision", summary["reason"])
    console.print(table)
    # Ids and paths whole (soft_wrap), to copy into `tunegate lineage` or a browser: a table
    # cuts them to the terminal's width.
    for name, value in (("adapter id", summary["adapter_id"]), ("report", summary["report"]),
                        ("eval report", summary["eval_report"])):  # fmt: skip
        console.print(f"[bold]{name}[/bold] {value}", soft_wrap=True)
    if not summary["promoted"]:
        raise typer.Exit(3)


@app.command()
def curate(config: ConfigArg) -> None:
    """Run curation alone and print the funnel (every row gets a verdict)."""
    cfg = _config(config)
    from tunegate import stages
    from tunegate.chat import ChatError, load_tokenizer
    from tunegate.curate import CurationError
    from tunegate.curate import curate as curate_rows
    from tunegate.review.stage import review_synthetic

    lineage = stages.open_lineage(cfg)
    run_id = lineage.start_run("curate", cfg.config_hash(), cfg.model_dump_json())
    try:
        base = stages.prepare_base_model(cfg, lineage)  # its tokenizer runs the template gate
        result = curate_rows(cfg, lineage, run_id, tokenizer=load_tokenizer(base.path, cfg))
        triage = review_synthetic(cfg, lineage, run_id, result, base.path)
        result = triage.result
        # the rows accepted now, as `tunegate train` takes them (`--snapshot`, default latest)
        snap = stages.snapshot_records(cfg, lineage, run_id, result.accepted)
    except (CurationError, ChatError) as exc:
        lineage.end_run(run_id, "failed", str(exc))
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    lineage.end_run(run_id, "completed")
    rows = [
        {"verdict": k, "rows": n} for k, n in sorted(result.reasons.items(), key=lambda kv: -kv[1])
    ]
    console.print(_table(f"curation {run_id}: {result.n_input} rows", rows))
    from tunegate.quality.report import STAGE_HEADER, stage_rows

    console.print(_table("funnel per stage", [dict(zip(STAGE_HEADER, r, strict=True))
                                              for r in stage_rows(result.stats)]))  # fmt: skip
    if result.report is not None:
        console.print(f"quality report: {result.report}")
    console.print(f"snapshot {snap.snapshot_id} ({len(snap.record_ids)} rows) {snap.path}: "
                  f"tunegate train {config}", soft_wrap=True)  # fmt: skip
    if triage.queued:
        console.print(f"{len(triage.queued)} row(s) wait for review (`review_pending` until "
                      "accepted; not in this snapshot): "
                      f"tunegate review serve --run {run_id}")  # fmt: skip


@app.command("train")
def train_cmd(
    config: ConfigArg,
    snapshot: Annotated[
        str | None, typer.Option(help="Snapshot id (a unique prefix) or file; default: latest.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Adapter directory; default <workspace>/adapters/<training run id>. "
                     "Required with several processes."),
    ] = None,
) -> None:  # fmt: skip
    """QLoRA-train an adapter on a curated snapshot, recorded in the lineage.

    One process, or several under `accelerate launch` (DDP): each trains on its share of every
    step; the main one records and saves.
    """
    from tunegate import stages
    from tunegate.lineage import LineageError
    from tunegate.models import config_base_model, resolve_base_model
    from tunegate.snapshot import Snapshot
    from tunegate.train import TrainError, is_main_process, process_state

    cfg = _config(config)
    procs = process_state()
    if procs.num_processes > 1 and out is None:
        err.print("[red]--out is required with several processes[/red] (they share one adapter)")
        raise typer.Exit(1)
    main = is_main_process()
    lineage = stages.open_lineage(cfg)
    try:
        row = lineage.snapshot(snapshot)
    except LineageError as exc:
        err.print(f"[red]{exc}[/red] (`tunegate run` or `tunegate curate` writes snapshots)")
        raise typer.Exit(1) from None
    snap = Snapshot(row["snapshot_id"], Path(row["path"]), ())
    with procs.main_process_first():  # the embedded model is de-quantized once, by the main one
        base = (stages.prepare_base_model(cfg, lineage) if main
                else resolve_base_model(config_base_model(cfg), cfg.workspace_dir))  # fmt: skip
    run_id = lineage.start_run("train", cfg.config_hash(), cfg.model_dump_json()) if main else ""
    try:
        result = stages.train_recorded(cfg, lineage if main else None, run_id, base, snap, out)
    except (TrainError, ValueError) as exc:
        if main:
            lineage.end_run(run_id, "failed", str(exc))
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if main:
        lineage.end_run(run_id, "completed")
        console.print(f"adapter {result.adapter_id} ({result.steps} steps) in {result.adapter_dir}")


@app.command("export")
def export_cmd(
    adapter: Annotated[str, typer.Argument(help="Adapter id (a unique prefix is enough).")],
    merged: Annotated[
        Path, typer.Option(help="Output directory of the merged safetensors model.")
    ],
    gguf: Annotated[
        Path | None, typer.Option(help="Also write this GGUF file (llama.cpp).")
    ] = None,
    gguf_type: Annotated[str, typer.Option(help="GGUF tensor type: f16 or f32.")] = "f16",
    workspace: WorkspaceOpt = Path(".tunegate"),
) -> None:  # fmt: skip
    """Merge an adapter into its de-quantized base: a standalone model (and GGUF)."""
    from tunegate.export import ExportError, export_adapter

    try:
        model, gguf_file = export_adapter(_lineage(workspace), adapter, merged, gguf, gguf_type)
    except ExportError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"merged model {model.sha256[:16]} in {model.path}")
    if gguf_file is not None:
        console.print(f"GGUF ({gguf_type}) in {gguf_file}")


@app.command()
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
    lineage = _lineage(workspace)
    if run_id is None:
        latest = lineage.query(
            "SELECT run_id FROM row_verdicts JOIN runs USING (run_id) "
            "ORDER BY started_at DESC LIMIT 1"
        )
        if not latest:
            err.print("[red]no verdicts recorded yet[/red]")
            raise typer.Exit(1)
        run_id = latest[0]["run_id"]
    sql = (
        "SELECT v.source, v.source_row, v.status, v.reason, v.detail, v.stage, v.duplicate_of, "
        "v.cluster_id, v.eval_item, v.raw, r.messages_json "
        "FROM row_verdicts v LEFT JOIN records r USING (record_id) WHERE v.run_id = ?"
    )
    params: list[Any] = [run_id]
    if reason:
        sql += " AND v.reason = ?"
        params.append(reason)
    if export:
        rows = lineage.query(
            sql + " AND v.status = 'rejected' ORDER BY v.source, v.source_row", params
        )
        with export.open("w") as f:
            for r in rows:
                msgs = json.loads(r.pop("messages_json")) if r["messages_json"] else None
                f.write(json.dumps({**r, "messages": msgs}, ensure_ascii=False) + "\n")
        console.print(f"wrote {len(rows)} rejected rows to {export}")
        return
    rows = lineage.query(sql + " ORDER BY v.source, v.source_row LIMIT ?", [*params, limit])
    for r in rows:  # the detail names the match; the rest is for --export
        for col in ("messages_json", "stage", "duplicate_of", "cluster_id", "eval_item", "raw"):
            r.pop(col)
    console.print(_table(f"verdicts of {run_id}", rows))


@app.command("lineage")
def lineage_cmd(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id (a unique prefix is enough).")],
    workspace: WorkspaceOpt = Path(".tunegate"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Trace an adapter back to its source files, snapshot, training run, evals and promotion."""
    from tunegate.lineage import LineageError

    try:
        chain = _lineage(workspace).chain(adapter_id)
    except LineageError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps(chain, default=str))
        return
    a, t, s = chain["adapter"], chain["training"], chain["snapshot"]
    # Paths are printed whole (soft_wrap): a table would cut them to the terminal's width.
    console.print(f"[bold]adapter[/bold] {a['adapter_id']}\n  path {a['path']}", soft_wrap=True)
    console.print("[bold]source files[/bold]")
    for r in chain["sources"]:
        console.print(
            f"  {r['path']}\n    sha256 {r['sha256'][:16]}  format {r['format']}"
            f"  origin {r['origin']}  rows {r['n_rows']}",
            soft_wrap=True,
        )
    console.print(f"[bold]verdicts[/bold] {chain['verdicts']}")
    if s:
        console.print(
            f"[bold]snapshot[/bold] {s['snapshot_id']} ({s['n_records']} records) {s['path']}",
            soft_wrap=True,
        )
    if t:
        console.print(
            f"[bold]training run[/bold] {t['training_run_id']} status {t['status']}\n"
            f"  config hash {t['config_hash']}\n  seed {t['seed']}\n"
            f"  base model {t['base_model_ref']} sha256 {t['base_model_sha256']}"
        )
    console.print(_table("eval results", chain["evals"]))
    console.print(_table("gates", chain["gates"]))
    console.print(_table("promotions", chain["promotions"]))


@app.command("inspect")
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
    from tunegate.lineage import LineageError
    from tunegate.models import config_base_model, resolve_base_model
    from tunegate.quality.template import inspect_row

    cfg = _config(config)
    try:
        record = _lineage(workspace or cfg.workspace_dir).record(row_id)
        model_dir = model or resolve_base_model(config_base_model(cfg), cfg.workspace_dir).path
        tokenizer = load_tokenizer(model_dir, cfg)
        end = end_of_turn(tokenizer, cfg.model.end_of_turn)
    except (LineageError, ChatError) as exc:
        err.print(f"[red]{exc}[/red]")
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
        err.print(f"[red]the trainer cannot use this row:[/red] {shown.error}")
        raise typer.Exit(1)


review_app = typer.Typer(no_args_is_help=True, help="Human review of synthetic rows.")
app.add_typer(review_app, name="review")
RunOpt = Annotated[str | None, typer.Option("--run", help="Only this run's queue.")]


@review_app.command("serve")
def review_serve(
    workspace: WorkspaceOpt = Path(".tunegate"),
    run_id: RunOpt = None,
    host: str = "127.0.0.1",
    port: int = 8765,
) -> None:
    """A local web page listing pending rows with accept / reject / edit."""
    from tunegate.review.web import serve

    lineage = _lineage(workspace)
    console.print(f"review page at http://{host}:{port}/ (Ctrl-C stops)")
    serve(lineage, run_id, host, port)


@review_app.command("export")
def review_export(
    out: Annotated[Path, typer.Argument(help="Output .csv or .jsonl.")],
    workspace: WorkspaceOpt = Path(".tunegate"),
    run_id: RunOpt = None,
) -> None:
    """Write pending rows to CSV/JSONL; fill decision, reviewer (and answer to edit)."""
    from tunegate.review.exchange import export_queue
    from tunegate.review.stage import ReviewError

    try:
        n = export_queue(_lineage(workspace), out, run_id)
    except ReviewError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"wrote {n} pending row(s) to {out}")


@review_app.command("import")
def review_import(
    path: Annotated[Path, typer.Argument(help="A filled-in export (.csv or .jsonl).")],
    workspace: WorkspaceOpt = Path(".tunegate"),
    reviewer: Annotated[str | None, typer.Option(help="For rows that name no reviewer.")] = None,
) -> None:
    """Apply the decisions of a filled-in export."""
    from tunegate.review.exchange import import_decisions
    from tunegate.review.stage import ReviewError

    try:
        summary = import_decisions(_lineage(workspace), path, reviewer)
    except ReviewError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"applied {summary.applied}, kept for later runs {summary.kept}, "
                  f"without decision {summary.blank}, errors {len(summary.errors)}")  # fmt: skip
    for line in summary.errors:
        err.print(f"[red]{line}[/red]")
    if summary.errors:
        raise typer.Exit(1)


# -- registry: aliases, promotion, rollback, and the release gate ---------------------------
AliasOpt = Annotated[str, typer.Option("--alias", "-a", help="Registry alias.")]
AdapterArg = Annotated[str, typer.Argument(help="Adapter id (a unique prefix) or directory.")]


def _decision_exit(decision: Any) -> None:
    """Print a registry decision; a refusal exits 3, as `tunegate run` does."""
    colour = "green" if decision.promoted else "red"
    console.print(f"[{colour}]{decision.decision}[/{colour}] {decision.adapter_id[:12]} → "
                  f"{decision.alias}: {decision.reason}", highlight=False)  # fmt: skip
    if not decision.promoted:
        raise typer.Exit(3)


@app.command()
def promote(
    adapter: AdapterArg,
    alias: AliasOpt = "production",
    force: Annotated[bool, typer.Option(help="Promote despite failed or missing gates.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (required with --force).")] = None,
    workspace: WorkspaceOpt = Path(".tunegate"),
) -> None:
    """Point an alias at an adapter whose gates all passed on its current files (3: refused)."""
    from tunegate.registry import RegistryError
    from tunegate.registry import promote as promote_adapter

    try:
        decision = promote_adapter(_lineage(workspace), adapter, alias, force=force, reason=reason)
    except RegistryError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _decision_exit(decision)


@app.command()
def rollback(
    alias: AliasOpt = "production",
    reason: Annotated[str | None, typer.Option(help="Why, for the history.")] = None,
    workspace: WorkspaceOpt = Path(".tunegate"),
) -> None:
    """Point an alias back at the adapter it held before (again: further back)."""
    from tunegate.registry import RegistryError
    from tunegate.registry import rollback as rollback_alias

    try:
        decision = rollback_alias(_lineage(workspace), alias, reason)
    except RegistryError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _decision_exit(decision)


registry_app = typer.Typer(no_args_is_help=True, help="Aliases and their history.")
app.add_typer(registry_app, name="registry")


@registry_app.command("list")
def registry_list(workspace: WorkspaceOpt = Path(".tunegate")) -> None:
    """Every alias, the adapter it points at, and the decision that put it there."""
    rows = [{"alias": r["alias"], "adapter": r["adapter_id"][:16], "since": r["updated_at"],
             "by": r["actor"], "decision": r["decision"]}
            for r in _lineage(workspace).aliases()]  # fmt: skip
    console.print(_table("aliases", rows) if rows else "no alias points at an adapter yet")


@registry_app.command("show")
def registry_show(alias: Annotated[str, typer.Argument(help="Registry alias.")],
                  workspace: WorkspaceOpt = Path(".tunegate")) -> None:  # fmt: skip
    """An alias's adapter: path, files digest, its latest gates and whether it may ship."""
    from tunegate.registry import release_check

    lineage = _lineage(workspace)
    entry = next((a for a in lineage.aliases() if a["alias"] == alias), None)
    if entry is None:
        err.print(f"[red]alias {alias!r} points at no adapter[/red]")
        raise typer.Exit(1)
    adapter = lineage.adapter(entry["adapter_id"])
    console.print(f"[bold]{alias}[/bold] → {adapter['adapter_id']}\n  path {adapter['path']}\n"
                  f"  files digest {entry['files_sha256']}\n  {entry['decision']} by "
                  f"{entry['actor']} at {entry['updated_at']}: {entry['reason']}")  # fmt: skip
    gates = lineage.latest_gates(adapter["adapter_id"])
    console.print(_table("latest gates", [{k: g[k] for k in ("gate", "passed", "value",
                                           "threshold", "reason")} for g in gates]))  # fmt: skip
    check = release_check(lineage, alias=alias)
    console.print(f"release gate: {'[green]pass' if check.ok else '[red]FAIL'}[/] {check.reason}")


@registry_app.command("history")
def registry_history(alias: Annotated[str, typer.Argument(help="Registry alias.")],
                     workspace: WorkspaceOpt = Path(".tunegate")) -> None:  # fmt: skip
    """Every decision about an alias, oldest first: promotions, forced ones, rollbacks, refusals."""
    rows = [{"when": r["created_at"], "decision": r["decision"], "adapter": r["adapter_id"][:12],
             "from": (r["previous_adapter_id"] or "")[:12], "by": r["actor"],
             "reason": r["reason"]} for r in _lineage(workspace).alias_history(alias)]  # fmt: skip
    console.print(_table(f"history of {alias}", rows) if rows else f"no decision about {alias!r}")


gate_app = typer.Typer(no_args_is_help=True, help="The release gate for CI.")
app.add_typer(gate_app, name="gate")


@gate_app.command("check")
def gate_check(
    adapter: Annotated[str | None, typer.Argument(help="Adapter id or directory.")] = None,
    alias: Annotated[str | None, typer.Option("--alias", "-a", help="Registry alias.")] = None,
    workspace: WorkspaceOpt = Path(".tunegate"),
) -> None:
    """Exit 0 only if the adapter's files match the registry and all its gates passed.

    Otherwise exit 1 with a one-line reason on stderr: what a CI release job runs.
    """
    from tunegate.registry import RegistryError, release_check

    if (adapter is None) == (alias is None):
        err.print("give an ADAPTER or --alias, not both")
        raise typer.Exit(2)
    try:
        check = release_check(_lineage(workspace), alias=alias, ref=adapter)
    except RegistryError as exc:
        err.print(f"release gate: FAIL {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    out = console if check.ok else err
    out.print(
        f"release gate: {'pass' if check.ok else 'FAIL'} {check.reason}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )  # one line, however long: CI logs grep it
    if not check.ok:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
