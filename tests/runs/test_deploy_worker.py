"""Scheduled nights through a real `prefect worker` (process pool), as an operator deploys them.

A real server, `prefect deploy --all` of two deployments whose interval schedules fall due
within seconds, `tunegate notify` pointing at a webhook receiver on 127.0.0.1, and a worker
that picks both runs up on its own:
- the tiny pipeline (random 2-layer Llama, learning rate 0, the small evals of
  tests/runs/test_pipeline.py) ends refused: the flow run COMPLETED, its lineage run named in the
  flow-run log and recorded `refused`;
- a config with a bad key: the flow run FAILED, the error in its log, a `failed` run in the
  lineage;
- the tiny run wrote reports/trends.html and the `nightly-trends` artifact;
- the webhook received one notification per night, refused and failed.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import duckdb
import pytest
import yaml
from conftest import REPO
from prefect_server import PREFECT, PrefectServer, free_port, prefect_server, stop_group
from test_pipeline import TUNEGATE, write_pipeline

# ~3-4 min: a server, a worker and two flow runs in subprocesses
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POOL = "tunegate-test"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Webhook(BaseHTTPRequestHandler):
    """Collects the JSON bodies POSTed to it (the notification block's requests)."""

    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Webhook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def write_deployments(path: Path, configs: dict[str, Path], due: datetime) -> Path:
    """A prefect.yaml like the shipped one, each deployment on an interval starting at `due`."""
    path.write_text(yaml.safe_dump({
        "name": "tunegate-test", "prefect-version": "3.8.8", "build": None, "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory":
                  {"directory": "{{ $TUNEGATE_HOME }}"}}],
        "deployments": [{
            "name": name, "entrypoint": "flows/pipeline.py:pipeline",
            "parameters": {"config_path": str(config)}, "work_pool": {"name": POOL},
            "schedules": [{"interval": 3600, "anchor_date": due.isoformat(), "timezone": "UTC"}],
        } for name, config in configs.items()],
    }, sort_keys=False))  # fmt: skip
    return path


def flow_run(server: PrefectServer, deployment: str) -> dict | None:
    dep = server.api("GET", f"/deployments/name/tunegate-pipeline/{deployment}")
    runs = server.api("POST", "/flow_runs/filter", {
        "deployments": {"id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_ASC",
        "limit": 1})  # fmt: skip
    return runs[0] if runs else None


def finished(server: PrefectServer, deployment: str) -> dict | None:
    run = flow_run(server, deployment)
    return run if run and run["state"]["type"] in TERMINAL else None


def run_log(server: PrefectServer, run: dict) -> str:
    logs = server.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}},
                                               "sort": "TIMESTAMP_ASC", "limit": 200})  # fmt: skip
    return "\n".join(entry["message"] for entry in logs)


def lineage_runs(workspace: Path) -> list[tuple]:
    with duckdb.connect(str(workspace / "lineage.duckdb"), read_only=True) as con:
        return con.execute("SELECT run_id, status, detail FROM runs ORDER BY started_at").fetchall()


def scheduler_error(error: str) -> bool:
    """The server errors this test fails on. SQLite under the worker's load may also log
    "database is locked" on a worker heartbeat, which Prefect retries on the next one (README
    "Deploying" recommends PostgreSQL for more than one machine): not what this test is about."""
    return "schedul" in error


def test_worker_runs_due_nights_to_completed_and_failed(tmp_path, tiny_base_model):
    (tmp_path / "tiny").mkdir()
    tiny = write_pipeline(
        tmp_path / "tiny", str(tiny_base_model.path),
        train={"learning_rate": 0.0, "max_steps": 2, "logging_steps": 1},
        eval_={"max_items": 8, "max_new_tokens": 8, "general": {"limit": 8}},
    )  # fmt: skip
    broken = tmp_path / "broken" / "pipeline.yaml"
    broken.parent.mkdir()
    broken.write_text(yaml.safe_dump({
        "workspace": "ws", "data": {"sources": [{"path": str(REPO / "datasets/raw")}]},
        "train": {"learning_rate": -1.0}}))  # fmt: skip

    receiver = HTTPServer(("127.0.0.1", free_port()), Webhook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    Webhook.received.clear()
    with prefect_server(tmp_path / "prefect") as server:
        env = {**server.env, "PYTHONPATH": str(REPO), "PREFECT_WORKER_QUERY_SECONDS": "2",
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # fmt: skip
        hook = f"http://127.0.0.1:{receiver.server_port}/hook"
        notify = subprocess.run([str(TUNEGATE), "notify", hook, "--allow-private-urls"], env=env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert notify.returncode == 0, notify.stdout + notify.stderr
        assert server.cli("work-pool", "create", POOL, "--type", "process").returncode == 0

        # Prefect's scheduler creates runs from now on: a `due` that passes while `prefect
        # deploy` starts (tens of seconds on 2 busy cores: it imports the flow) is skipped to
        # the next interval, an hour later. Two minutes of lead hold under load.
        due = datetime.now(UTC) + timedelta(seconds=120)
        spec = write_deployments(tmp_path / "prefect.yaml", {"tiny": tiny, "broken": broken}, due)
        deployed = server.cli("--no-prompt", "deploy", "--all", "--prefect-file", str(spec))
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        worker_log = tmp_path / "worker.log"
        with worker_log.open("w") as out:
            worker = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            failed = server.wait_for(
                "the broken night finished",
                lambda: finished(server, "broken"),
                300,
                scheduler_error,
            )
            done = server.wait_for(
                "the tiny night finished", lambda: finished(server, "tiny"), 900, scheduler_error
            )
            server.wait_for("two webhook calls", lambda: len(Webhook.received) >= 2, 120,
                            scheduler_error)  # fmt: skip
        finally:
            stop_group(worker)
            receiver.shutdown()
        worker_output = worker_log.read_text()[-4000:]

        # 1. The tiny night: started by the schedule, not by hand, and COMPLETED (refused).
        assert done["state"]["type"] == "COMPLETED", (done["state"], worker_output)
        assert done["auto_scheduled"] and done["expected_start_time"].startswith(f"{due:%Y-%m-%d}")
        log = run_log(server, done)
        (run_id,) = re.findall(r"lineage run (run-\S+)", log)
        assert (run_id, "refused") in [r[:2] for r in lineage_runs(tmp_path / "tiny" / "ws")]

        # 2. The broken night: FAILED, the error in its flow-run log and in the lineage.
        assert failed["state"]["type"] == "FAILED", (failed["state"], worker_output)
        assert "train.learning_rate" in run_log(server, failed)
        ((_, status, detail),) = lineage_runs(tmp_path / "broken" / "ws")
        assert status == "failed" and "train.learning_rate" in detail

        # 3. The trends page and its artifact, written by the run itself.
        assert run_id in (tmp_path / "tiny" / "reports" / "trends.html").read_text()
        trends = {"key": {"any_": ["nightly-trends"]}, "flow_run_id": {"any_": [done["id"]]}}
        (artifact,) = server.api("POST", "/artifacts/filter", {"artifacts": trends})
        assert run_id in artifact["data"] and "refused" in artifact["data"]

        # 4. The scheduler kept working under the worker's load.
        assert list(filter(scheduler_error, server.errors())) == []

        # 5. One webhook call per night, naming its status and lineage run.
        texts = sorted(call["text"] for call in Webhook.received)
        assert [call["subject"].split(": ")[-1] for call in Webhook.received].count("refused") == 1
        assert any(run_id in t and "refused" in t for t in texts), texts
        assert any("failed" in t and "train.learning_rate" in t for t in texts), texts
