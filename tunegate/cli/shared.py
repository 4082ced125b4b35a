"""What every command shares: the consoles, common arguments, and opening the config and
the lineage with a clean exit instead of a traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tunegate.config import ConfigError, PipelineConfig, check_runnable, load_config

if TYPE_CHECKING:  # imported when a command opens it: `tunegate --help` stays quick
    from tunegate.lineage import Lineage

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


def checked_config(path: Path, runnable: bool = False, gated: bool = False) -> PipelineConfig:
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


def lineage_at(workspace: Path, read_only: bool = False) -> Lineage:
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
