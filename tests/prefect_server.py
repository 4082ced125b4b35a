"""A real `prefect server start` for deployment tests: own home, free loopback port, log kept.

The server's output goes to a file the tests read: a scheduler that fails every loop
(SQLAlchemy 2.1 under Prefect 3.8.8) only shows there, never in a CLI's exit code.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import free_port  # re-exported: `from prefect_server import free_port`

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")

# A traceback, or a log record at ERROR or above, anywhere in the server's output.
SERVER_ERROR = re.compile(r"Traceback \(most recent call last\)|\|\s*(ERROR|CRITICAL)\s*\|")
NEW_RECORD = re.compile(r"\d\d:\d\d:\d\d\.\d+ \|")  # how each of the server's log records starts


@dataclass
class PrefectServer:
    """A running server: the environment that points a CLI or worker at it, and its log."""

    env: dict[str, str]
    url: str
    log: Path

    def cli(self, *args: str, cwd: Path = REPO, timeout: float = 180) -> Any:
        return subprocess.run([PREFECT, *args], env=self.env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    def api(self, method: str, path: str, body: object | None = None) -> Any:
        """One REST call to the server's API; the JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def errors(self) -> list[str]:
        """Every ERROR record or traceback the server logged so far, each whole."""
        records: list[list[str]] = []
        inside = False
        for line in self.log.read_text(errors="replace").splitlines():
            if SERVER_ERROR.search(line) and not (inside and line.startswith("Traceback")):
                records.append([line])
                inside = True
            elif inside and not NEW_RECORD.match(line):
                records[-1].append(line)  # the traceback and the exception that ended it
            else:
                inside = False
        return ["\n".join(r) for r in records]

    def wait_for(
        self, what: str, probe: Callable[[], Any], timeout_s: float,
        fatal: Callable[[str], bool] = lambda error: True,
    ) -> Any:  # fmt: skip
        """Poll `probe` until it returns something truthy; fail naming `what` and the log.

        A server error `fatal` accepts ends the wait at once (no point waiting out the clock);
        the others are reported only if the wait times out.
        """
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            found = probe()
            if found:
                return found
            if any(fatal(error) for error in self.errors()):
                break
            time.sleep(2)
        raise AssertionError(f"{what} not seen after {time.monotonic() - start:.0f} s (limit "
                             f"{timeout_s:.0f} s); server errors:\n"
                             + "\n---\n".join(self.errors()))  # fmt: skip


@contextmanager
def prefect_server(home: Path, **settings: str) -> Iterator[PrefectServer]:
    """Start `prefect server start` under `home` (its database too, unless `settings` say else).

    The scheduler loops every 5 s instead of 60 so a test sees its first pass quickly.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
           "PREFECT_CLI_PROMPT": "false", "TUNEGATE_HOME": str(REPO), **settings}  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = PrefectServer(env=env, url=url, log=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Prefect server did not start:\n{log.read_text()[-4000:]}"
                    ) from None
                time.sleep(1)
        yield server
    finally:
        stop_group(proc)  # the server and the services it spawned


def stop_group(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to the process group `proc` leads, SIGKILL after `grace_s`: a Prefect server or
    worker on busy cores may take longer than that to shut down, which no test is about."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
