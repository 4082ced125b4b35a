"""The whole pipeline: `validate` a config, `run` it as a Prefect flow, `notify` on its end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunegate.cli.shared import ConfigArg, checked_config, console, err
from tunegate.config import ConfigError, check_runnable, load_config


def validate(config: ConfigArg) -> None:
    """Check a pipeline YAML and its sources; every bad key or unreadable source is reported,
    a compute dtype this machine's device cannot run, and a gate that cannot be conclusive at
    the configured eval size (with the n it needs)."""
    from tunegate.runs.preflight import check_sources

    cfg = checked_config(config, runnable=True, gated=True)
    try:
        check_sources(cfg, config)
    except ConfigError as exc:
        err.print(f"[red]invalid config[/red] {exc}", soft_wrap=True)  # paths whole
        raise typer.Exit(1) from None
    console.print(f"[green]ok[/green] {config} (config hash {cfg.config_hash()[:16]})")


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
