"""The `tunegate` command line: one subcommand per stage plus lineage queries."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunegate.config import ConfigError, PipelineConfig, check_runnable, load_config

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
# Prefect waits 20 s for its temporary server; on 2 busy cores its start measured longer
# ("Timed out while attempting to connect to ephemeral Prefect API server").
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _config(path: Path, runnable: bool = False, gated: bool = False) -> PipelineConfig:
    """The config, or exit 1 with every problem; `runnable`: also checked against the device;
    `gated`: its gates must be able to reach a conclusion at the configured eval size."""
    try:
        config = load_config(path)
        if runnable:
            from tunegate.precision import pick_device

            check_runnable(config, pick_device(), str(path))
        if gated:
            from tunegate.release.sizing import sizing_problems

            if problems := sizing_problems(config):
                raise ConfigError(str(path), problems)
        return config
    except ConfigError as exc:
        err.print(f"[red]invalid config[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


def _lineage(workspace: Path, read_only: bool = False):
    """The workspace's lineage; `read_only` for commands that only read (a read-only copy of a
    workspace works); a damaged file is refused with the way to recover, not a traceback."""
    from tunegate.lineage import Lineage, LineageError

    db = workspace / "lineage.duckdb"
    if not db.is_file():
        err.print(f"[red]no lineage database at {db}[/red] (run `tunegate run` first)")
        raise typer.Exit(1)
    try:
        return Lineage(db, read_only=read_only)
    except LineageError as exc:
        err.print(str(exc), markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    """Rows as a table; a value too wide for its column (a path, an id) is folded, never cut.

    Values are escaped: a role `[/bold]` or `[link=...]` in a row is text, not rich markup.
    """
    table = Table(title=escape(title), title_justify="left")
    for col in rows[0] if rows else []:
        table.add_column(escape(str(col)), overflow="fold")
    for row in rows:
        table.add_row(
            *(f"{v:.4f}" if isinstance(v, float) else escape(str(v)) for v in row.values())
        )
    return table


@app.command()
def validate(config: ConfigArg) -> None:
    """Check a pipeline YAML and its sources; every bad key or unreadable source is reported,
    a compute dtype this machine's device cannot run, and a gate that cannot be conclusive at
    the configured eval size (with the n it needs)."""
    from tunegate.runs.preflight import check_sources

    cfg = _config(config, runnable=True, gated=True)
    try:
        check_sources(cfg, config)
    except ConfigError as exc:
        err.print(f"[red]invalid config[/red] {exc}", soft_wrap=True)  # paths whole
        raise typer.Exit(1) from None
    console.print(f"[green]ok[/green] {config} (config hash {cfg.config_hash()[:16]})")


@app.command()
def run(
    config: ConfigArg = Path("pipeline.yaml"),
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show library output on the terminal too.")
    ] = False,
) -> None:
    """Run the whole gated pipeline as a Prefect flow (temporary local server).

    The terminal shows one line per stage and the summary; progress bars, warnings and
    Prefect's logs go to `reports/<run id>/run.log`.
    """
    from tunegate.precision import pick_device

    try:  # fail fast, before Prefect starts
        cfg = load_config(config)
        check_runnable(cfg, pick_device(), str(config))
    except ConfigError as exc:
        from tunegate.runs.preflight import record_failed_start

        record_failed_start("pipeline", config, exc)  # a failed night is in the lineage too
        err.print(f"[red]invalid config[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    from flows.pipeline import pipeline
    from tunegate.lineage import new_id
    from tunegate.runlog import quiet_run

    run_id = new_id("run")
    log_path = cfg.resolve("reports") / run_id / "run.log"
    console.print(f"tunegate run [bold]{run_id}[/bold] (log: {log_path})", soft_wrap=True)
    try:
        if verbose:
            summary = pipeline(str(config), run_id=run_id)
        else:
            with quiet_run(log_path):
                summary = pipeline(str(config), run_id=run_id)
    except Exception as exc:
        import traceback

        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            traceback.print_exc(file=log)
        err.print(f"[red]run {run_id} failed:[/red] {escape(str(exc))}", soft_wrap=True)
        err.print(f"traceback and library output: {log_path}", soft_wrap=True)
        raise typer.Exit(1) from None
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
    table.add_row("gate", escape(str(summary["gate"])))
    table.add_row("decision", escape(str(summary["reason"])))
    console.print(table)
    # Ids and paths whole (soft_wrap), to copy into `tunegate lineage` or a browser: a table
    # cuts them to the terminal's width.
    for name, value in (("adapter id", summary["adapter_id"]), ("report", summary["report"]),
                        ("eval report", summary["eval_report"])):  # fmt: skip
        console.print(f"[bold]{name}[/bold] {value}", soft_wrap=True)
    if not summary["promoted"]:
        raise typer.Exit(3)


@app.command()
def notify(
    webhook_url: Annotated[str, typer.Argument(help="URL the webhook POSTs JSON to.")],
    on: Annotated[
        list[str] | None,
        typer.Option(help="Run status that notifies (repeat; default: refused and failed)."),
    ] = None,
    allow_private_urls: Annotated[
        bool, typer.Option(help="Allow a webhook on a private or loopback address.")
    ] = False,
) -> None:
    """Create the Prefect webhook block and automation that report refused or failed runs."""
    from flows.notify import setup_notifications

    on = on or ["refused", "failed"]
    bad = sorted(set(on) - {"promoted", "refused", "failed"})
    if bad:
        err.print(f"[red]unknown status[/red] {', '.join(bad)} (promoted, refused, failed)")
        raise typer.Exit(1)
    block_id, automation_id = setup_notifications(webhook_url, on, allow_private_urls)
    console.print(f"webhook block {block_id}, automation {automation_id}: runs that end "
                  f"{' or '.join(on)} POST to {webhook_url}", soft_wrap=True)  # fmt: skip


@app.command()
def curate(config: ConfigArg) -> None:
    """Run curation alone and print the funnel (every row gets a verdict)."""
    cfg = _config(config)
    from tunegate.chat import ChatError, load_tokenizer
    from tunegate.curation.run import CurationError
    from tunegate.curation.run import curate as curate_rows
    from tunegate.data.snapshot import snapshot_records
    from tunegate.faults import fault_point
    from tunegate.models import prepare_base_model
    from tunegate.review.triage import review_synthetic
    from tunegate.runs.guard import guard_run, open_lineage

    lineage = open_lineage(cfg)
    run_id = lineage.start_run("curate", cfg.config_hash(), cfg.model_dump_json())
    try:
        with guard_run(lineage, run_id):  # any other error ends the run `failed`, then raises
            base = prepare_base_model(cfg, lineage)  # its tokenizer: the template gate
            fault_point("base_model")
            tokenizer = load_tokenizer(base.path, cfg)
            result = curate_rows(cfg, lineage, run_id, tokenizer=tokenizer)
            triage = review_synthetic(cfg, lineage, run_id, result, base.path)
            fault_point("curated")
            # the rows accepted now, as `tunegate train` takes them (`--snapshot`, default latest)
            snap = snapshot_records(cfg, lineage, run_id, triage.accepted)
    except (CurationError, ChatError, OSError) as exc:  # OSError: a full disk (run `failed`)
        err.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)  # paths whole
        raise typer.Exit(1) from None
    lineage.end_run(run_id, "completed")
    rows = [
        {"verdict": k, "rows": n} for k, n in sorted(result.reasons.items(), key=lambda kv: -kv[1])
    ]
    console.print(_table(f"curation {run_id}: {result.n_input} rows", rows))
    from tunegate.curation.report import STAGE_HEADER, stage_rows

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
    from tunegate.data.snapshot import Snapshot
    from tunegate.lineage import LineageError
    from tunegate.models import config_base_model, prepare_base_model, resolve_base_model
    from tunegate.runs.guard import guard_run, open_lineage
    from tunegate.training.stage import train_recorded
    from tunegate.training.train import TrainError, is_main_process, process_state

    cfg = _config(config, runnable=True)
    procs = process_state()
    if procs.num_processes > 1 and out is None:
        err.print("[red]--out is required with several processes[/red] (they share one adapter)")
        raise typer.Exit(1)
    main = is_main_process()
    lineage = open_lineage(cfg)
    try:
        row = lineage.snapshot(snapshot)
    except LineageError as exc:
        err.print(
            f"[red]{escape(str(exc))}[/red] (`tunegate run` or `tunegate curate` writes snapshots)"
        )
        raise typer.Exit(1) from None
    snap = Snapshot(row["snapshot_id"], Path(row["path"]), ())
    with procs.main_process_first():  # the embedded model is de-quantized once, by the main one
        base = (prepare_base_model(cfg, lineage) if main
                else resolve_base_model(config_base_model(cfg), cfg.workspace_dir))  # fmt: skip
    run_id = lineage.start_run("train", cfg.config_hash(), cfg.model_dump_json()) if main else ""
    try:
        with guard_run(lineage, run_id) if main else contextlib.nullcontext():
            result = train_recorded(cfg, lineage if main else None, run_id, base, snap,
                                           out)  # fmt: skip
    except (TrainError, ValueError) as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
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
    from tunegate.release.export import ExportError, export_adapter

    try:
        model, gguf_file = export_adapter(_lineage(workspace), adapter, merged, gguf, gguf_type)
    except ExportError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
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
    lineage = _lineage(workspace, read_only=True)
    unfinished = {r["run_id"]: r for r in lineage.unfinished_runs()}
    if run_id is None:  # the latest run that finished: an unfinished one's verdicts are partial
        latest = lineage.latest_finished_run()
        if latest is None:
            err.print("[red]no finished run with verdicts yet[/red]")
            raise typer.Exit(1)
        run_id = latest["run_id"]
        for r in unfinished.values():
            if r["started_at"] > latest["started_at"]:
                err.print(f"note: newer run {r['run_id']} {_unfinished(r)}; --run to see it",
                          markup=False, soft_wrap=True)  # fmt: skip
    _report_conservation(lineage, run_id, unfinished.get(run_id))
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


@app.command()
def runs(
    workspace: WorkspaceOpt = Path(".tunegate"),
    limit: Annotated[int, typer.Option(help="Last N pipeline runs.")] = 30,
    trends: Annotated[
        Path | None, typer.Option(help="Also write DIR/trends.html (e.g. --trends reports).")
    ] = None,
) -> None:
    """Pipeline runs, oldest first: status, rows, rejections, gates, adapter, what changed."""
    from tunegate.runs.history import run_history
    from tunegate.runs.trends import night_rows, write_trends

    nights = run_history(_lineage(workspace, read_only=True), limit)
    rows = [
        {"run": n.run_id, "started (UTC)": f"{n.started_at:%Y-%m-%d %H:%M}", "status": n.status,
         "duration s": "" if n.duration_s is None else round(n.duration_s),
         "rows in / accepted": f"{n.rows_in} / {n.accepted}",
         "rejected": ", ".join(f"{k} {v}" for k, v in sorted(n.rejected.items())),
         "gates": ", ".join(f"{g.gate} {g.label} {g.value:+.3f}"
                            for g in n.gates),
         "promoted": (n.promoted_adapter or "")[:12],
         "changed (and why a run failed)": "; ".join(
             flags + ([n.detail or ""] if n.status == "failed" else []))}
        for n, flags in reversed(night_rows(nights))
    ]  # fmt: skip
    console.print(_table(f"{len(nights)} pipeline runs in {workspace}", rows))
    if trends is not None:
        console.print(f"trends report: {write_trends(trends, nights)}", soft_wrap=True)


def _unfinished(run: dict[str, Any]) -> str:
    state = {True: "is still running", False: "was abandoned (its process is gone)",
             None: "has not finished"}[run["alive"]]  # fmt: skip
    return f"{state}: {run['verdicts']} partial verdict(s)"


def _report_conservation(lineage: Any, run_id: str, unfinished: dict[str, Any] | None) -> None:
    """Input rows = accepted + rejected, checked for a finished run, reported for another."""
    (run,) = lineage.query("SELECT status FROM runs WHERE run_id = ?", [run_id]) or [None]
    n = lineage.query(
        "SELECT (SELECT count(*) FROM row_verdicts WHERE run_id = ?) AS verdicts, "
        "(SELECT sum(n_rows) FROM sources WHERE run_id = ?) AS rows_in",
        [run_id, run_id])[0]  # fmt: skip
    if unfinished is not None or (run and run["status"] == "abandoned"):
        err.print(f"WARNING: run {run_id} did not finish ({run and run['status']}): "
                  f"{n['verdicts']} verdict(s) recorded, input size unknown; not conserved",
                  markup=False, soft_wrap=True)  # fmt: skip
    elif n["rows_in"] is not None and n["rows_in"] != n["verdicts"]:
        err.print(f"WARNING: run {run_id}: {n['rows_in']} rows in, {n['verdicts']} verdicts: "
                  "conservation broken", markup=False, soft_wrap=True)  # fmt: skip


@app.command("lineage")
def lineage_cmd(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id (a unique prefix is enough).")],
    workspace: WorkspaceOpt = Path(".tunegate"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Trace an adapter back to its source files, snapshot, training run, evals and promotion."""
    from tunegate.lineage import LineageError

    try:
        chain = _lineage(workspace, read_only=True).chain(adapter_id)
    except LineageError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
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
    from tunegate.curation.checks.template import inspect_row
    from tunegate.lineage import LineageError
    from tunegate.models import config_base_model, resolve_base_model

    cfg = _config(config)
    try:
        record = _lineage(workspace or cfg.workspace_dir).record(row_id)
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


review_app = typer.Typer(no_args_is_help=True, help="Human review of synthetic rows.")
app.add_typer(review_app, name="review")
RunOpt = Annotated[str | None, typer.Option("--run", help="Only this run's queue.")]


@review_app.command("serve")
def review_serve(
    workspace: WorkspaceOpt = Path(".tunegate"),
    run_id: RunOpt = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    reviewer: Annotated[
        list[str] | None,
        typer.Option(help="Reviewer name; a token is generated for each and printed once."),
    ] = None,
    tokens: Annotated[
        Path | None, typer.Option(help="File of `NAME TOKEN` lines: tokens set up beforehand.")
    ] = None,
    allow_host: Annotated[
        list[str] | None, typer.Option(help="Another Host name the page answers to.")
    ] = None,
    max_body_kb: Annotated[int, typer.Option(help="Largest request body accepted.")] = 1024,
) -> None:
    """A local web page listing pending rows with accept / reject / edit (token sign-in)."""
    import getpass

    from tunegate.review.guard import LOOPBACK_NAMES, Guard, load_tokens, new_tokens
    from tunegate.review.web import bind_warning, serve

    lineage = _lineage(workspace)
    try:
        configured = load_tokens(tokens) if tokens else {}
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a container user with no name
            user = "reviewer"
        generated = new_tokens(reviewer or ([] if tokens else [user]))
        hosts = {*LOOPBACK_NAMES, *(allow_host or [])}
        if host not in ("0.0.0.0", "::"):
            hosts.add(host)
        guard = Guard(configured | generated, hosts, max_body_bytes=max_body_kb * 1024)
    except (OSError, ValueError) as exc:
        err.print(f"[red]cannot start the review page:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    warning = bind_warning(host, guard)
    if warning:
        err.print(f"[yellow]{escape(warning)}[/yellow]")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"
    console.print(f"review page at {base} (Ctrl-C stops)", markup=False, highlight=False,
                  soft_wrap=True)  # fmt: skip
    if tokens:
        console.print(f"sign in with a token of {tokens}: {base}?token=TOKEN", markup=False,
                      highlight=False, soft_wrap=True)  # fmt: skip
    for token, name in generated.items():  # printed once: they live as long as the server
        console.print(f"  sign-in link for {name}: {base}?token={token}", markup=False,
                      highlight=False, soft_wrap=True)  # fmt: skip
    serve(lineage, guard, run_id, host, port)


@review_app.command("export")
def review_export(
    out: Annotated[Path, typer.Argument(help="Output .csv or .jsonl.")],
    workspace: WorkspaceOpt = Path(".tunegate"),
    run_id: RunOpt = None,
) -> None:
    """Write pending rows to CSV/JSONL; fill decision, reviewer (and answer to edit)."""
    from tunegate.review.exchange import export_queue
    from tunegate.review.triage import ReviewError

    try:
        n = export_queue(_lineage(workspace, read_only=True), out, run_id)
    except ReviewError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
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
    from tunegate.review.triage import ReviewError

    try:
        summary = import_decisions(_lineage(workspace), path, reviewer)
    except ReviewError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    console.print(f"applied {summary.applied}, kept for later runs {summary.kept}, "
                  f"without decision {summary.blank}, errors {len(summary.errors)}")  # fmt: skip
    for line in summary.errors:
        err.print(f"[red]{escape(line)}[/red]")
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
    from tunegate.release.registry import RegistryError
    from tunegate.release.registry import promote as promote_adapter

    try:
        decision = promote_adapter(_lineage(workspace), adapter, alias, force=force, reason=reason)
    except RegistryError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    _decision_exit(decision)


@app.command()
def rollback(
    alias: AliasOpt = "production",
    reason: Annotated[str | None, typer.Option(help="Why, for the history.")] = None,
    workspace: WorkspaceOpt = Path(".tunegate"),
) -> None:
    """Point an alias back at the adapter it held before (again: further back)."""
    from tunegate.release.registry import RegistryError
    from tunegate.release.registry import rollback as rollback_alias

    try:
        decision = rollback_alias(_lineage(workspace), alias, reason)
    except RegistryError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    _decision_exit(decision)


registry_app = typer.Typer(no_args_is_help=True, help="Aliases and their history.")
app.add_typer(registry_app, name="registry")


@registry_app.command("list")
def registry_list(workspace: WorkspaceOpt = Path(".tunegate")) -> None:
    """Every alias, the adapter it points at, and the decision that put it there."""
    rows = [{"alias": r["alias"], "adapter": r["adapter_id"][:16], "since": r["updated_at"],
             "by": r["actor"], "decision": r["decision"]}
            for r in _lineage(workspace, read_only=True).aliases()]  # fmt: skip
    console.print(_table("aliases", rows) if rows else "no alias points at an adapter yet")


@registry_app.command("show")
def registry_show(alias: Annotated[str, typer.Argument(help="Registry alias.")],
                  workspace: WorkspaceOpt = Path(".tunegate")) -> None:  # fmt: skip
    """An alias's adapter: path, files digest, its latest gates and whether it may ship."""
    from tunegate.release.registry import release_check

    lineage = _lineage(workspace, read_only=True)
    entry = next((a for a in lineage.aliases() if a["alias"] == alias), None)
    if entry is None:
        err.print(f"[red]alias {alias!r} points at no adapter[/red]")
        raise typer.Exit(1)
    adapter = lineage.adapter(entry["adapter_id"])
    console.print(f"[bold]{alias}[/bold] → {adapter['adapter_id']}\n  path {adapter['path']}\n"
                  f"  files digest {entry['files_sha256']}\n  {entry['decision']} by "
                  f"{entry['actor']} at {entry['updated_at']}: {entry['reason']}")  # fmt: skip
    gates = lineage.latest_gates(adapter["adapter_id"])
    console.print(_table("latest gates", [{k: g[k] for k in ("gate", "outcome", "value",
                                           "threshold", "reason")} for g in gates]))  # fmt: skip
    check = release_check(lineage, alias=alias)
    console.print(f"release gate: {'[green]pass' if check.ok else '[red]FAIL'}[/] {check.reason}")


@registry_app.command("history")
def registry_history(alias: Annotated[str, typer.Argument(help="Registry alias.")],
                     workspace: WorkspaceOpt = Path(".tunegate")) -> None:  # fmt: skip
    """Every decision about an alias, oldest first: promotions, forced ones, rollbacks, refusals."""
    rows = [{"when": r["created_at"], "decision": r["decision"], "adapter": r["adapter_id"][:12],
             "from": (r["previous_adapter_id"] or "")[:12], "by": r["actor"],
             "reason": r["reason"]}
            for r in _lineage(workspace, read_only=True).alias_history(alias)]  # fmt: skip
    console.print(_table(f"history of {alias}", rows) if rows else f"no decision about {alias!r}")


gate_app = typer.Typer(no_args_is_help=True, help="The release gate for CI.")
app.add_typer(gate_app, name="gate")


@gate_app.command("check")
def gate_check(
    adapter: Annotated[str | None, typer.Argument(help="Adapter id or directory.")] = None,
    alias: Annotated[str | None, typer.Option("--alias", "-a", help="Registry alias.")] = None,
    workspace: WorkspaceOpt = Path(".tunegate"),
) -> None:
    """Exit 0 only if the adapter's files match the registry and all its gates passed
    (inconclusive ones too where the alias's policy accepted them when it moved the alias).

    Otherwise exit 1 with a one-line reason on stderr: what a CI release job runs.
    """
    from tunegate.release.registry import RegistryError, release_check

    if (adapter is None) == (alias is None):
        err.print("give an ADAPTER or --alias, not both")
        raise typer.Exit(2)
    try:
        check = release_check(_lineage(workspace, read_only=True), alias=alias, ref=adapter)
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


db_app = typer.Typer(no_args_is_help=True, help="The lineage database: check, back up, restore.")
app.add_typer(db_app, name="db")


@db_app.command("check")
def db_check(
    workspace: WorkspaceOpt = Path(".tunegate"),
    deep: Annotated[bool, typer.Option(help="Read every block (DuckDB checksums).")] = False,
) -> None:
    """Exit 0 if the lineage file is whole (and, with --deep, every block reads back)."""
    from tunegate.lineage import Lineage, damaged_message

    db = workspace / "lineage.duckdb"
    if not db.is_file():
        err.print(f"no lineage database at {db}", markup=False)
        raise typer.Exit(1)
    why = Lineage.unchecked(db).damage(deep=deep)
    if why:
        err.print(damaged_message(str(db), why), markup=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"ok {db}" + (" (every block read)" if deep else ""), markup=False)


@db_app.command("backup")
def db_backup(
    out: Annotated[Path, typer.Argument(help="Folder for one Parquet file per table.")],
    workspace: WorkspaceOpt = Path(".tunegate"),
) -> None:
    """Save every table as Parquet (a damaged file: every table still readable); exit 1 if
    some table could not be read."""
    from tunegate.lineage import Lineage

    db = workspace / "lineage.duckdb"
    if not db.is_file():
        err.print(f"no lineage database at {db}", markup=False)
        raise typer.Exit(1)
    summary = Lineage.unchecked(db).backup(out)  # as is, even damaged
    rows = sum(summary["tables"].values())
    console.print(f"backed up {len(summary['tables'])} tables ({rows} rows) to {out}",
                  markup=False, soft_wrap=True)  # fmt: skip
    for table, why in summary["unreadable"].items():
        err.print(f"unreadable: {table}: {why}", markup=False, soft_wrap=True)
    if summary["unreadable"]:
        raise typer.Exit(1)


@db_app.command("restore")
def db_restore(
    backup: Annotated[Path, typer.Argument(help="A `tunegate db backup` folder.")],
    workspace: WorkspaceOpt = Path(".tunegate"),
) -> None:
    """Rebuild the lineage file from a backup (move a damaged file aside first)."""
    from tunegate.lineage import LineageError, restore_lineage

    try:
        restored = restore_lineage(backup, workspace / "lineage.duckdb")
    except (LineageError, OSError, ValueError) as exc:
        err.print(f"cannot restore: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"restored {sum(restored.values())} rows into {workspace / 'lineage.duckdb'}",
                  markup=False, soft_wrap=True)  # fmt: skip
