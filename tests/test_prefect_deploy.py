"""`prefect deploy --all` against a real local Prefect server creates the scheduled deployment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def prefect_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TUNEGATE_HOME": str(REPO)}  # fmt: skip
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("local Prefect server did not start in 90 s")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_prefect_deploy_creates_the_scheduled_deployment(prefect_server):
    env = prefect_server
    run = lambda *args: subprocess.run(  # noqa: E731
        [PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=180
    )
    created = run("work-pool", "create", "tunegate", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    shown = run("deployment", "inspect", "tunegate-pipeline/nightly")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "0 2 * * *" in shown.stdout
    assert "flows/pipeline.py:pipeline" in shown.stdout
    assert "pipeline.yaml" in shown.stdout
