"""Training: `train` an adapter on a curated snapshot."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tunegate.cli.shared import ConfigArg, checked_config, console, err


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

    cfg = checked_config(config, runnable=True)
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
