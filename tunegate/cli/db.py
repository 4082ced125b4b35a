"""`tunegate db`: check, back up and restore the lineage file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunegate.cli.shared import WorkspaceOpt, console, err

db_app = typer.Typer(no_args_is_help=True, help="The lineage database: check, back up, restore.")


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
