"""Reading the history: `runs` (pipeline runs side by side), `lineage` (one adapter's chain)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tunegate.cli.output import rows_table
from tunegate.cli.shared import WorkspaceOpt, console, err, lineage_at


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

    nights = run_history(lineage_at(workspace, read_only=True), limit)
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
    console.print(rows_table(f"{len(nights)} pipeline runs in {workspace}", rows))
    if trends is not None:
        console.print(f"trends report: {write_trends(trends, nights)}", soft_wrap=True)


def lineage_cmd(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id (a unique prefix is enough).")],
    workspace: WorkspaceOpt = Path(".tunegate"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Trace an adapter back to its source files, snapshot, training run, evals and promotion."""
    from tunegate.lineage import LineageError

    try:
        chain = lineage_at(workspace, read_only=True).chain(adapter_id)
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
    console.print(rows_table("eval results", chain["evals"]))
    console.print(rows_table("gates", chain["gates"]))
    console.print(rows_table("promotions", chain["promotions"]))
