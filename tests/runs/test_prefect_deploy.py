"""`prefect deploy --all` on a real local Prefect server: the nightly schedule really fires.

A deployment whose cron is registered but whose server never creates a run looks fine in
`prefect deployment inspect`; only the server's own scheduler shows it. So these tests wait
(bounded) until the server holds SCHEDULED runs for the next nights, and fail on any
traceback or ERROR record in the server's log. The scheduler runs against the server's
database: SQLite here, PostgreSQL (Debian's `postgresql`) in the second test when it starts.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest
from postgres_server import PostgresUnavailable, postgres_database
from prefect_server import PrefectServer, prefect_server

pytestmark = pytest.mark.integration

NIGHTS = 3  # the scheduler must have planned at least this many nights ahead


def scheduled_nights(server: PrefectServer, deployment_id: str) -> list[datetime]:
    """Expected start times of the deployment's SCHEDULED flow runs, earliest first."""
    runs = server.api("POST", "/flow_runs/filter", {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        "sort": "EXPECTED_START_TIME_ASC", "limit": 20,
    })  # fmt: skip
    return [datetime.fromisoformat(r["expected_start_time"]) for r in runs]


def deploy_and_wait_for_nights(server: PrefectServer) -> None:
    """Create the pool, deploy prefect.yaml, and wait until the nights ahead are scheduled."""
    created = server.cli("work-pool", "create", "tunegate", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = server.cli("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    shown = server.cli("deployment", "inspect", "tunegate-pipeline/nightly")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "flows/pipeline.py:pipeline" in shown.stdout
    assert "pipeline.yaml" in shown.stdout

    deployment = server.api("GET", "/deployments/name/tunegate-pipeline/nightly")
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
    nights = server.wait_for(
        f"{NIGHTS} scheduled nightly runs",
        lambda: (n := scheduled_nights(server, deployment["id"])) and len(n) >= NIGHTS and n,
        timeout_s=120,
    )
    assert server.errors() == [], "\n---\n".join(server.errors())
    now = datetime.now(nights[0].tzinfo)
    assert now < nights[0] <= now + timedelta(days=1)  # the next night, not a past one
    for night, following in itertools.pairwise(nights):
        assert (night.hour, night.minute, night.utcoffset()) == (2, 0, timedelta(0))
        assert following - night == timedelta(days=1)  # one run a night, none skipped


def test_nightly_schedule_fires_on_sqlite(tmp_path):
    """The default server (SQLite in PREFECT_HOME) schedules the next nights."""
    with prefect_server(tmp_path / "prefect") as server:
        deploy_and_wait_for_nights(server)


@pytest.fixture()
def postgres_url():
    """A fresh PostgreSQL database for the Prefect server; skipped where none can start."""
    try:
        with postgres_database() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot start here: {exc}")


def test_nightly_schedule_fires_on_postgres(tmp_path, postgres_url):
    """A team's server on PostgreSQL schedules the next nights (skipped without PostgreSQL)."""
    with prefect_server(tmp_path / "prefect",
                        PREFECT_API_DATABASE_CONNECTION_URL=postgres_url) as server:  # fmt: skip
        deploy_and_wait_for_nights(server)
        shown = server.cli("config", "view", "--show-secrets")
        assert "postgresql+asyncpg" in shown.stdout, shown.stdout
