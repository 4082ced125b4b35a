"""Terminal output helpers: rows as a rich table, and how an unfinished run is described."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table


def rows_table(title: str, rows: list[dict[str, Any]]) -> Table:
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


def unfinished_note(run: dict[str, Any]) -> str:
    state = {True: "is still running", False: "was abandoned (its process is gone)",
             None: "has not finished"}[run["alive"]]  # fmt: skip
    return f"{state}: {run['verdicts']} partial verdict(s)"
