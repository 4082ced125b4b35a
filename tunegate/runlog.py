"""What a run shows on the terminal, and the log file that keeps everything else.

A pipeline run drives libraries that each print their own progress bars and warnings
(`datasets` split generation, lm-eval's request bars, transformers' weight loading, GGUF
de-quantization, FutureWarnings). On a terminal that buries the few lines a person needs. So
`tunegate run` sends the process's whole stdout and stderr, file descriptors included (C
libraries and the Prefect server subprocess write there too), to `reports/<run id>/run.log`,
and shows only tunegate's own progress: one line per stage, written to the `tunegate.progress`
logger by the stages themselves. Outside `quiet_run` (a deployment, a test) those records go
wherever logging is configured, so the stages stay free of terminal concerns.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

PROGRESS = logging.getLogger("tunegate.progress")


def say(message: str, *, transient: bool = False) -> None:
    """One progress line; `transient` lines (a training step) are replaced by the next line
    on a terminal and left out elsewhere, so a stage ends as one line either way."""
    PROGRESS.info(message, extra={"transient": transient})


def stage_line(stage: str, text: str) -> str:
    """`stage` in a fixed column, so a run's lines read as a table."""
    return f"{stage:<10} {text}"


def rate(count: float, seconds: float, unit: str) -> str:
    """`123 rows/s` (`1.4 items/s` below 100); a stage too fast to time says so instead."""
    if seconds < 0.05:
        return "<0.05 s"
    per_s = count / seconds
    return f"{per_s:,.0f} {unit}/s" if per_s >= 100 else f"{per_s:.1f} {unit}/s"


class TerminalHandler(logging.Handler):
    """Writes progress records to the terminal; transient ones overwrite themselves in place."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        self.tty = stream.isatty()
        self._open_line = False  # a transient line is on screen without its newline

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if getattr(record, "transient", False):
            if self.tty:
                self.stream.write(f"\r\x1b[2K{text}")
                self._open_line = True
                self.stream.flush()
            return
        prefix = "\r\x1b[2K" if self._open_line else ""
        self._open_line = False
        self.stream.write(f"{prefix}{text}\n")
        self.stream.flush()


def _terminal_stream() -> TextIO:
    """A stream to what stdout is now, that survives fd 1 being pointed at the log file.

    A real stdout is duplicated at the descriptor level; a stream without a descriptor (a
    test runner's buffer) is used as it is, since redirecting fd 1 does not touch it.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return sys.stdout
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


@contextmanager
def quiet_run(log_path: Path) -> Iterator[TextIO]:
    """Everything printed inside goes to `log_path`; progress lines go to the terminal.

    Yields the terminal stream. On leaving (also by an exception) stdout and stderr are what
    they were, so the caller prints the summary or the error with the log's path.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    terminal = _terminal_stream()
    handler = TerminalHandler(terminal)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = log_path.open("a", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    saved_streams = sys.stdout, sys.stderr
    level, propagate = PROGRESS.level, PROGRESS.propagate
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    kept = logging.StreamHandler(log)  # the log file has the progress lines too, steps included
    kept.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    PROGRESS.addHandler(handler)
    PROGRESS.addHandler(kept)
    PROGRESS.setLevel(logging.INFO)
    PROGRESS.propagate = False  # once on the terminal, not again through the root logger
    try:
        yield terminal
    finally:
        PROGRESS.removeHandler(handler)
        PROGRESS.removeHandler(kept)
        PROGRESS.setLevel(level)
        PROGRESS.propagate = propagate
        with suppress(ValueError, OSError):
            log.flush()
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        log.close()
        if terminal is not sys.stdout:
            terminal.close()
