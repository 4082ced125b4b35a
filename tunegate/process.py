"""Which process owns a run, and whether it is still alive: how a killed run is recognised.

A run records its owner (pid, host, and the process's start time, so a reused pid is not
mistaken for it). The next command on the same host that finds the run still `running` with
its owner gone marks it `abandoned`. Another host's process cannot be asked from here: its
run is judged by its heartbeat instead (`tunegate/runs/guard.py`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    start: str | None  # the process's start time in clock ticks since boot (Linux), or None


def process_start(pid: int) -> str | None:
    """Start time of a process (field 22 of /proc/PID/stat); None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # the fields after the command name (which may hold spaces and parentheses)
    return stat.rsplit(")", 1)[-1].split()[19]


def current_owner() -> Owner:
    return Owner(os.getpid(), socket.gethostname(), process_start(os.getpid()))


def is_alive(owner: Owner) -> bool | None:
    """True / False for an owner on this host; None for another host (cannot tell)."""
    if owner.host != socket.gethostname():
        return None
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, under another user
    return owner.start is None or process_start(owner.pid) in (None, owner.start)
