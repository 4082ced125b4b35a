"""`python -m tunegate.cli`: the same command line as `tunegate` (tests and `accelerate launch`)."""

from tunegate.cli import app

app()
