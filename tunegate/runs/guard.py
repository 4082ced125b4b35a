"""Every run ends `completed`, `failed` (with its error) or `abandoned`: never `running` forever.

- `guard_run` wraps the body of a command: any exception (a bad row is not one, but a full
  disk, a bug or Ctrl-C are) ends the run `failed` with the error before it propagates;
  SIGTERM is turned into such an exception.
- a run killed outright (SIGKILL, power loss) cannot write anything; `reap_abandoned`, run
  by the next command that writes to the workspace, finds it by its dead owner process,
  marks it `abandoned`, and removes its spool folder (`<workspace>/curation/<run id>`) and
  the adapter folder its unfinished training was writing. Its partial verdicts stay in the
  lineage, under a run that says it did not finish.
- another host's process cannot be asked whether it lives: a guarded run refreshes a
  heartbeat (`Heartbeat`, every `HEARTBEAT_S`), and a run of another host whose heartbeat is
  older than `STALE_AFTER_S` is reaped too. The margin absorbs clock skew between hosts and a
  beat delayed by a busy lineage file; a run that never beat (older tunegate) is left alone.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from tunegate.config import PipelineConfig
from tunegate.lineage import Lineage, now

HEARTBEAT_S = 30.0  # one UPDATE on the lineage file: cheap next to any stage
STALE_AFTER_S = 600.0  # 20 missed beats: that host's process is taken for dead


def reap_abandoned(
    lineage: Lineage, workspace: Path, stale_after_s: float = STALE_AFTER_S
) -> list[str]:
    """Mark runs whose owner process died (or, on another host, stopped beating) `abandoned`
    and clean their partial files."""
    reaped = []
    for run in lineage.unfinished_runs():
        why = _why_abandoned(run, now(), stale_after_s)
        if why is None:
            continue
        lineage.end_run(run["run_id"], "abandoned", f"{why}; {run['verdicts']} partial "
                        "verdict(s) kept, not conserved")  # fmt: skip
        for t in lineage.query("SELECT training_run_id FROM training_runs WHERE run_id = ? "
                               "AND status = 'running'", [run["run_id"]]):  # fmt: skip
            lineage.end_training(t["training_run_id"], "abandoned", {})
            adapters = workspace / "adapters"  # unrecorded: whole or half-written, never used
            for name in (t["training_run_id"], t["training_run_id"] + ".partial"):
                shutil.rmtree(adapters / name, ignore_errors=True)
        shutil.rmtree(workspace / "curation" / run["run_id"], ignore_errors=True)
        reaped.append(run["run_id"])
    return reaped


def _why_abandoned(run: dict, at: datetime, stale_after_s: float) -> str | None:
    """Why an unfinished run is dead, or None while it may still work."""
    owner = f"owner process {run['pid']} on {run['host']}"
    if run["alive"] is False:
        return f"{owner} ended without finishing the run (killed or crashed)"
    beat = run.get("heartbeat")
    if run["alive"] is None and beat is not None and at - beat > timedelta(seconds=stale_after_s):
        return (
            f"{owner} sent no heartbeat since {beat:%Y-%m-%d %H:%M:%S} UTC (over "
            f"{stale_after_s:.0f} s): taken for dead (killed, crashed or its host down)"
        )
    return None


class Heartbeat(threading.Thread):
    """Refreshes a run's heartbeat every `every_s` until stopped or the run has ended.

    A daemon: it dies with its process, which is the point (a killed run stops beating).
    A beat that cannot reach the lineage (busy file, full disk) is skipped, not raised: the
    run itself decides how it ends.
    """

    def __init__(self, lineage: Lineage, run_id: str, every_s: float = HEARTBEAT_S) -> None:
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self.lineage, self.run_id, self.every_s = lineage, run_id, every_s
        self._stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                if not self.lineage.beat(self.run_id):
                    return  # ended, by whoever ended it
            except Exception as exc:
                logging.getLogger(__name__).debug("heartbeat of %s skipped: %s", self.run_id, exc)
            if self._stopping.wait(self.every_s):
                return

    def stop(self) -> None:
        self._stopping.set()
        self.join()


class Terminated(SystemExit):
    """SIGTERM, raised as an exception so the run is ended `failed` before the process exits."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


@contextmanager
def guard_run(lineage: Lineage, run_id: str, heartbeat_s: float = HEARTBEAT_S) -> Iterator[None]:
    """End the run `failed` with the error if the body raises (the caller ends it otherwise);
    the run's heartbeat beats meanwhile."""
    main = threading.current_thread() is threading.main_thread()  # signals: main thread only
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    heartbeat = Heartbeat(lineage, run_id, heartbeat_s)
    heartbeat.start()
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
        heartbeat.stop()
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
