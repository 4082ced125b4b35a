"""Fault injection for the crash tests: `TUNEGATE_KILL_AT=<point>` SIGKILLs the process there.

The points are the boundaries of a run where a kill leaves different partial state behind
(`tests/runs/test_faults.py` kills a real `tunegate curate` at each and checks the next command
marks the run `abandoned`, cleans its files, and a rerun conserves every row). Unset, a
point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("base_model", "verdicts_written", "curated")


def fault_point(name: str) -> None:
    """Die here, as a kill -9 would, when the environment asks for it."""
    if os.environ.get("TUNEGATE_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
