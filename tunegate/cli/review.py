"""`tunegate review`: human review of synthetic rows (web page, file export and import)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tunegate.cli.shared import WorkspaceOpt, console, err, lineage_at

review_app = typer.Typer(no_args_is_help=True, help="Human review of synthetic rows.")
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

    lineage = lineage_at(workspace)
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
        n = export_queue(lineage_at(workspace, read_only=True), out, run_id)
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
        summary = import_decisions(lineage_at(workspace), path, reviewer)
    except ReviewError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    console.print(f"applied {summary.applied}, kept for later runs {summary.kept}, "
                  f"without decision {summary.blank}, errors {len(summary.errors)}")  # fmt: skip
    for line in summary.errors:
        err.print(f"[red]{escape(line)}[/red]")
    if summary.errors:
        raise typer.Exit(1)
