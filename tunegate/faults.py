"""Fault injection for the crash tests: `TUNEGATE_KILL_AT=<point>` SIGKILLs the process there.

The points are the boundaries of a run where a kill leaves different partial state behind.
`tests/runs/test_faults.py` kills a real `tunegate curate` at each of `POINTS`, and
`tests/runs/test_pipeline_faults.py` a real `tunegate run` at each of `RUN_POINTS`; both
check that the next command marks the run `abandoned` and cleans its files, and that a rerun
duplicates and loses nothing. Unset, a point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("base_model", "verdicts_written", "curated")  # `tunegate curate`
# `tunegate run` (flows/pipeline.py), in the order a run reaches them: `checkpoint_saved` is
# mid-training, right after the trainer wrote a checkpoint (tunegate/training/checkpoints.py).
RUN_POINTS = ("curated", "snapshot", "checkpoint_saved", "adapter_recorded", "base_evals",
              "adapter_evals", "gates_recorded")  # fmt: skip


def fault_point(name: str) -> None:
    """Die here, as a kill -9 would, when the environment asks for it."""
    if os.environ.get("TUNEGATE_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
