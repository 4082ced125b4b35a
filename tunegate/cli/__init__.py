"""The `tunegate` command line: one subcommand per stage plus lineage queries."""

from __future__ import annotations

import typer

from tunegate.cli import data, db, pipeline, release, review, runs, train

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

# In pipeline order; `tunegate --help` lists them so.
app.command()(pipeline.validate)
app.command()(pipeline.run)
app.command()(pipeline.notify)
app.command()(data.curate)
app.command("train")(train.train_cmd)
app.command("export")(release.export_cmd)
app.command()(data.verdicts)
app.command()(runs.runs)
app.command("lineage")(runs.lineage_cmd)
app.command("inspect")(data.inspect_cmd)
app.add_typer(review.review_app, name="review")
app.command()(release.promote)
app.command()(release.rollback)
app.add_typer(release.registry_app, name="registry")
app.add_typer(release.gate_app, name="gate")
app.add_typer(db.db_app, name="db")
