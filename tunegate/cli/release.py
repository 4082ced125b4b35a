"""Release: `export` a merged model, `promote` and `rollback` aliases, `registry`, `gate check`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from tunegate.cli.output import rows_table
from tunegate.cli.shared import WorkspaceOpt, console, err, lineage_at

AliasOpt = Annotated[str, typer.Option("--alias", "-a", help="Registry alias.")]
AdapterArg = Annotated[str, typer.Argument(help="Adapter id (a unique prefix) or directory.")]


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
        model, gguf_file = export_adapter(lineage_at(workspace), adapter, merged, gguf, gguf_type)
    except ExportError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    console.print(f"merged model {model.sha256[:16]} in {model.path}")
    if gguf_file is not None:
        console.print(f"GGUF ({gguf_type}) in {gguf_file}")


def _decision_exit(decision: Any) -> None:
    """Print a registry decision; a refusal exits 3, as `tunegate run` does."""
    colour = "green" if decision.promoted else "red"
    console.print(f"[{colour}]{decision.decision}[/{colour}] {decision.adapter_id[:12]} → "
                  f"{decision.alias}: {decision.reason}", highlight=False)  # fmt: skip
    if not decision.promoted:
        raise typer.Exit(3)


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
        lineage = lineage_at(workspace)
        decision = promote_adapter(lineage, adapter, alias, force=force, reason=reason)
    except RegistryError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    _decision_exit(decision)


def rollback(
    alias: AliasOpt = "production",
    reason: Annotated[str | None, typer.Option(help="Why, for the history.")] = None,
    workspace: WorkspaceOpt = Path(".tunegate"),
) -> None:
    """Point an alias back at the adapter it held before (again: further back)."""
    from tunegate.release.registry import RegistryError
    from tunegate.release.registry import rollback as rollback_alias

    try:
        decision = rollback_alias(lineage_at(workspace), alias, reason)
    except RegistryError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    _decision_exit(decision)


registry_app = typer.Typer(no_args_is_help=True, help="Aliases and their history.")


@registry_app.command("list")
def registry_list(workspace: WorkspaceOpt = Path(".tunegate")) -> None:
    """Every alias, the adapter it points at, and the decision that put it there."""
    rows = [{"alias": r["alias"], "adapter": r["adapter_id"][:16], "since": r["updated_at"],
             "by": r["actor"], "decision": r["decision"]}
            for r in lineage_at(workspace, read_only=True).aliases()]  # fmt: skip
    console.print(rows_table("aliases", rows) if rows else "no alias points at an adapter yet")


@registry_app.command("show")
def registry_show(alias: Annotated[str, typer.Argument(help="Registry alias.")],
                  workspace: WorkspaceOpt = Path(".tunegate")) -> None:  # fmt: skip
    """An alias's adapter: path, files digest, its latest gates and whether it may ship."""
    from tunegate.release.registry import release_check

    lineage = lineage_at(workspace, read_only=True)
    entry = next((a for a in lineage.aliases() if a["alias"] == alias), None)
    if entry is None:
        err.print(f"[red]alias {alias!r} points at no adapter[/red]")
        raise typer.Exit(1)
    adapter = lineage.adapter(entry["adapter_id"])
    console.print(f"[bold]{alias}[/bold] → {adapter['adapter_id']}\n  path {adapter['path']}\n"
                  f"  files digest {entry['files_sha256']}\n  {entry['decision']} by "
                  f"{entry['actor']} at {entry['updated_at']}: {entry['reason']}")  # fmt: skip
    gates = lineage.latest_gates(adapter["adapter_id"])
    console.print(rows_table("latest gates", [{k: g[k] for k in ("gate", "outcome", "value",
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
            for r in lineage_at(workspace, read_only=True).alias_history(alias)]  # fmt: skip
    console.print(
        rows_table(f"history of {alias}", rows) if rows else f"no decision about {alias!r}"
    )


gate_app = typer.Typer(no_args_is_help=True, help="The release gate for CI.")


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
        check = release_check(lineage_at(workspace, read_only=True), alias=alias, ref=adapter)
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
