"""Every run ends `completed`, `failed` (with its error) or `abandoned`: never `running` forever.

- `guard_run` wraps the body of a command: any exception (a bad row is not one, but a full
  disk, a bug or Ctrl-C are) ends the run `failed` with the error before it propagates;
  SIGTERM is turned into such an exception.
- a run killed outright (SIGKILL, power loss) cannot write anything; `reap_abandoned`, run
  by the next command that writes to the workspace, finds it by its dead owner process,
  marks it `abandoned`, and removes its spool folder (`<workspace>/curation/<run id>`).
  Its partial verdicts stay in the lineage, under a run that says it did not finish.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunegate.config import PipelineConfig
from tunegate.lineage import Lineage


def reap_abandoned(lineage: Lineage, workspace: Path) -> list[str]:
    """Mark runs whose owner process died `abandoned` and clean their partial files."""
    reaped = []
    for run in lineage.unfinished_runs():
        if run["alive"] is not False:
            continue
        lineage.end_run(
            run["run_id"], "abandoned",
            f"owner process {run['pid']} on {run['host']} ended without finishing the run "
            f"(killed or crashed); {run['verdicts']} partial verdict(s) kept, not conserved",
        )  # fmt: skip
        for t in lineage.query("SELECT training_run_id FROM training_runs WHERE run_id = ? "
                               "AND status = 'running'", [run["run_id"]]):  # fmt: skip
            lineage.end_training(t["training_run_id"], "abandoned", {})
        shutil.rmtree(workspace / "curation" / run["run_id"], ignore_errors=True)
        reaped.append(run["run_id"])
    return reaped


class Terminated(SystemExit):
    """SIGTERM, raised as an exception so the run is ended `failed` before the process exits."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


@contextmanager
def guard_run(lineage: Lineage, run_id: str) -> Iterator[None]:
    """End the run `failed` with the error if the body raises (the caller ends it otherwise)."""
    main = threading.current_thread() is threading.main_thread()  # signals: main thread only
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    try:
        yield
    except BaseException as exc:
        why = "terminated (SIGTERM)" if isinstance(exc, Terminated) else (
            "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt)
            else f"{type(exc).__name__}: {exc}")  # fmt: skip
        if lineage.query("SELECT status FROM runs WHERE run_id = ?", [run_id])[0]["status"] == (
            "running"
        ):
            lineage.end_run(run_id, "failed", why)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def open_lineage(config: PipelineConfig) -> Lineage:
    """The workspace's lineage, for a command that writes: runs whose process died are marked
    `abandoned` first (and their spool files removed)."""
    lineage = Lineage(config.workspace_dir / "lineage.duckdb")
    for run_id in reap_abandoned(lineage, config.workspace_dir):
        logging.getLogger(__name__).warning(
            "run %s was abandoned by its process: marked `abandoned`", run_id
        )
    return lineage
