"""Fault injection: a real `tunegate curate` killed (SIGKILL) at each boundary of a run, then
the next command. Nothing duplicated, nothing lost, the dead run marked `abandoned` with its
spool files gone, and readers never show it as the latest finished run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from conftest import assert_conserved

from tunegate.faults import POINTS
from tunegate.lineage import Lineage, now

pytestmark = pytest.mark.integration

ROWS = [{"instruction": f"Add {i} and {i + 1}.", "output": f"{i} + {i + 1} = {2 * i + 1}."}
        for i in range(40)] + [{"instruction": "broken"}]  # fmt: skip


TUNEGATE = Path(sys.executable).parent / "tunegate"


def tunegate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(TUNEGATE), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)  # fmt: skip


@pytest.fixture()
def workspace(tmp_path, embedded_model_dir) -> Path:
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({
        "workspace": "ws", "model": {"base_model": str(embedded_model_dir)},
        "data": {"sources": [{"path": "d.jsonl"}], "min_accepted_rows": 1},
        "contracts": {"batch_suite": None},
    }))  # fmt: skip
    return tmp_path


@pytest.mark.e2e
@pytest.mark.slow  # ~1 min a point on 2 busy cores: a real `tunegate curate` twice
@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_at_each_boundary_is_marked_and_the_rerun_conserves(workspace, point):
    config, ws = str(workspace / "pipeline.yaml"), workspace / "ws"
    killed = tunegate("curate", config, env={"TUNEGATE_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    lineage = Lineage(ws / "lineage.duckdb")
    (dead,) = lineage.query("SELECT run_id, status FROM runs")
    assert dead["status"] == "running"  # what a kill leaves: a lie until someone notices
    spool = ws / "curation" / dead["run_id"]
    assert spool.exists() or point == "base_model"
    shown = tunegate("verdicts", "-w", str(ws))  # a reader never presents it as finished
    assert shown.returncode == 1 and "no finished run" in shown.stderr
    rerun = tunegate("curate", config)
    assert rerun.returncode == 0, rerun.stderr
    runs = {r["run_id"]: r for r in lineage.query("SELECT run_id, status, detail FROM runs")}
    assert runs[dead["run_id"]]["status"] == "abandoned"
    assert "ended without finishing" in runs[dead["run_id"]]["detail"]
    assert not spool.exists()
    (done,) = [r for r in runs.values() if r["status"] == "completed"]
    assert assert_conserved(lineage, done["run_id"], len(ROWS))["schema"] == 1
    assert lineage.query("SELECT count(*) AS n FROM records")[0]["n"] == 40  # nothing twice
    shown = tunegate("verdicts", "-w", str(ws))
    assert shown.returncode == 0 and done["run_id"] in shown.stdout


def test_an_error_inside_a_run_ends_it_failed_with_the_error(workspace):
    config, ws = workspace / "pipeline.yaml", workspace / "ws"
    (workspace / "empty.parquet").write_bytes(b"")  # ArrowInvalid, once a traceback
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["sources"].append({"path": "empty.parquet"})
    config.write_text(yaml.safe_dump(cfg))
    res = tunegate("curate", str(config))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "empty.parquet: cannot read this file" in res.stderr
    (run,) = Lineage(ws / "lineage.duckdb").query("SELECT status, detail FROM runs")
    assert run["status"] == "failed" and "empty.parquet: cannot read" in run["detail"]


def test_a_full_disk_ends_the_run_not_in_a_lie(workspace, tmp_path):
    """ENOSPC on a small tmpfs workspace: the run fails or is abandoned, never left `running`."""
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): " + mounted.stderr.decode().strip())
    try:
        rows = [{"instruction": f"Question {i} " + "word " * 60, "output": f"Answer {i}."}
                for i in range(20_000)]  # fmt: skip
        (workspace / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = yaml.safe_load((workspace / "pipeline.yaml").read_text())
        cfg["workspace"] = str(disk / "ws")
        (workspace / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
        res = tunegate("curate", str(workspace / "pipeline.yaml"))
        assert res.returncode != 0
        assert "No space left" in res.stderr or "space" in res.stderr.lower(), res.stderr[-2000:]
        assert "Traceback" not in res.stderr
        lineage = Lineage(disk / "ws" / "lineage.duckdb", read_only=True)
        (run,) = lineage.query("SELECT status, detail FROM runs")
        assert run["status"] == "failed" and "No space left" in run["detail"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, check=False)


def test_only_runs_whose_process_is_gone_are_reaped(tmp_path):
    from tunegate.runs.guard import guard_run, reap_abandoned

    lineage = Lineage(tmp_path / "lineage.duckdb")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    runs = {name: lineage.start_run(name, "h", "{}") for name in ("dead", "alive", "elsewhere")}
    lineage.query("UPDATE run_owners SET pid = ? WHERE run_id = ?", [gone.pid, runs["dead"]])
    lineage.query("UPDATE run_owners SET host = 'other-host' WHERE run_id = ?",
                  [runs["elsewhere"]])  # fmt: skip
    (tmp_path / "curation" / runs["dead"]).mkdir(parents=True)
    assert reap_abandoned(lineage, tmp_path) == [runs["dead"]]
    status = {r["run_id"]: r["status"] for r in lineage.query("SELECT run_id, status FROM runs")}
    assert status == {runs["dead"]: "abandoned", runs["alive"]: "running",
                      runs["elsewhere"]: "running"}  # fmt: skip
    assert not (tmp_path / "curation" / runs["dead"]).exists()
    with pytest.raises(KeyError), guard_run(lineage, runs["alive"]):
        {}["boom"]  # a bug in a stage
    (row,) = lineage.query("SELECT status, detail FROM runs WHERE run_id = ?", [runs["alive"]])
    assert row == {"status": "failed", "detail": "KeyError: 'boom'"}


def test_a_run_of_another_host_is_reaped_once_its_heartbeat_is_stale(tmp_path):
    from tunegate.runs.guard import STALE_AFTER_S, reap_abandoned

    lineage = Lineage(tmp_path / "lineage.duckdb")
    runs = {name: lineage.start_run(name, "h", "{}") for name in ("stale", "fresh", "silent")}
    lineage.query("UPDATE run_owners SET host = 'other-host', pid = 1")  # alive: cannot tell
    lineage.query("UPDATE run_owners SET heartbeat = ? WHERE run_id = ?",
                  [now() - timedelta(seconds=STALE_AFTER_S + 60), runs["stale"]])  # fmt: skip
    assert lineage.beat(runs["fresh"])  # "silent" never beat: an older tunegate, left alone
    training = lineage.start_training(runs["stale"], "s", "h", 0, "b")
    half = tmp_path / "adapters" / f"{training}.partial"
    half.mkdir(parents=True)  # the adapter its training was saving when the host went down
    assert reap_abandoned(lineage, tmp_path) == [runs["stale"]]
    rows = {r["run_id"]: r for r in lineage.query("SELECT run_id, status, detail FROM runs")}
    assert {k: rows[v]["status"] for k, v in runs.items()} == {
        "stale": "abandoned", "fresh": "running", "silent": "running"}  # fmt: skip
    assert "no heartbeat since" in rows[runs["stale"]]["detail"]
    assert "other-host" in rows[runs["stale"]]["detail"]
    assert not half.exists()
    (t,) = lineage.query("SELECT status FROM training_runs")
    assert t["status"] == "abandoned"


def test_a_guarded_run_beats_while_it_lives_and_stops_when_it_ends(tmp_path):
    from tunegate.runs.guard import Heartbeat, guard_run

    lineage = Lineage(tmp_path / "lineage.duckdb")
    run_id = lineage.start_run("curate", "h", "{}")

    def heartbeats(n: int) -> list[object]:
        seen: list[object] = []
        deadline = time.monotonic() + 10
        while len(set(seen)) < n and time.monotonic() < deadline:
            (row,) = lineage.query("SELECT heartbeat FROM run_owners WHERE run_id = ?", [run_id])
            if row["heartbeat"] is not None:
                seen.append(row["heartbeat"])
            time.sleep(0.02)
        return sorted(set(seen))

    with guard_run(lineage, run_id, heartbeat_s=0.05):
        beats = heartbeats(3)
    assert len(beats) == 3 and beats[0] < beats[-1]  # it advances
    last = heartbeats(1)[-1]
    time.sleep(0.2)
    assert heartbeats(1)[-1] == last  # the guard stopped it
    beating = Heartbeat(lineage, run_id, every_s=0.05)  # the pipeline's: stops when the run ends
    beating.start()
    lineage.end_run(run_id, "completed")
    beating.join(timeout=5)
    assert not beating.is_alive()
