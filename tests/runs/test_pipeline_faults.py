"""Fault injection over a whole run: a real `tunegate run` SIGKILLed at each boundary of
`tunegate/faults.py` `RUN_POINTS`, each kill followed by the next run on the same workspace.

One chain is shared by every boundary (the setup and the Prefect server start once): run k is
killed at point k, so it also is the rerun of run k - 1, which it has to mark `abandoned` and
then carry past the point where that one died; the run after the last kill finishes. Each
run costs a process start: the chain of 8 took 4 min on 2 quiet cores, 12 min on 2 cores
shared with other jobs (marked slow).
Smallest config that reaches every boundary: a tiny random Llama, 25 rows, 4 training steps
with a checkpoint every 2, 4 held-out items, no general suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_conserved
from prefect_server import prefect_server

from tunegate.faults import RUN_POINTS
from tunegate.lineage import Lineage

TUNEGATE = Path(sys.executable).parent / "tunegate"
N_GOOD = 24
N_ROWS = N_GOOD + 1  # one row without an answer: a `schema` verdict, so conservation is not trivial
pytestmark = pytest.mark.e2e

ONCE_PER_RUN = {"eval_results": "subject, task, metric", "gate_results": "gate"}  # row keys


@dataclass
class Kill:
    """What one killed run left behind, seen before the next command ran."""

    returncode: int
    run_id: str
    status: str
    checkpoints: list[str]


@dataclass
class Chain:
    """The workspace after the chain, each killed run, and the run that finished."""

    workspace: Path
    kills: dict[str, Kill]
    final: subprocess.CompletedProcess[str]
    final_run_id: str


def write_config(root: Path, base_model: Path) -> Path:
    rows = (REPO / "datasets/raw/tickets_human.jsonl").read_text().splitlines()[:N_GOOD]
    rows.append(json.dumps({"instruction": "an answer never came"}))
    (root / "d.jsonl").write_text("\n".join(rows) + "\n")
    config = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    config.update(workspace=str(root / "ws"), contracts={"batch_suite": None},
                  data={"sources": [{"path": "d.jsonl"}], "min_accepted_rows": 1})  # fmt: skip
    config["model"]["base_model"] = str(base_model)
    config["train"].update(max_steps=4, checkpoint_steps=2, batch_size=2, logging_steps=1,
                           gradient_accumulation_steps=1, validation_fraction=0.0)  # fmt: skip
    config["eval"].update(heldout_path=str(REPO / config["eval"]["heldout_path"]), max_items=4,
                          max_new_tokens=4, general={"tasks": []})  # fmt: skip
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_id_of(res: subprocess.CompletedProcess[str]) -> str:
    """The id `tunegate run` prints first, before anything can kill it."""
    found = re.search(r"tunegate run (run-\S+)", res.stdout)
    assert found, res.stdout[-3000:] + res.stderr[-3000:]
    return found.group(1)


def tunegate_run(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`tunegate run` in its own session; whatever it started is gone once it returns."""
    proc = subprocess.Popen([str(TUNEGATE), "run", str(config)], cwd=config.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, tiny_base_model) -> Chain:
    root = tmp_path_factory.mktemp("killed-runs")
    config, ws = write_config(root, tiny_base_model.path), root / "ws"
    kills = {}
    with prefect_server(root / "prefect") as server:
        env = {**server.env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        for point in RUN_POINTS:
            res = tunegate_run(config, {**env, "TUNEGATE_KILL_AT": point})
            run_id = run_id_of(res)
            (dead,) = Lineage(ws / "lineage.duckdb").query(
                "SELECT status FROM runs WHERE run_id = ?", [run_id]
            )
            checkpoints = sorted(p.name for p in (ws / "checkpoints").glob("*/checkpoint-*"))
            kills[point] = Kill(res.returncode, run_id, dead["status"], checkpoints)
        final = tunegate_run(config, env)
    return Chain(ws, kills, final, run_id_of(final))


@pytest.mark.slow
@pytest.mark.parametrize("point", RUN_POINTS)
def test_a_run_killed_at_a_boundary_is_marked_and_cleaned_by_the_next(chain, point):
    kill = chain.kills[point]
    assert kill.returncode == -signal.SIGKILL and kill.status == "running"  # a lie, until...
    lineage = Lineage(chain.workspace / "lineage.duckdb")
    (run,) = lineage.query("SELECT status, detail FROM runs WHERE run_id = ?", [kill.run_id])
    assert run["status"] == "abandoned" and "ended without finishing" in run["detail"]
    assert not (chain.workspace / "curation" / kill.run_id).exists()  # its spool, if any
    # every boundary comes after curation: each row of the dead run has its one verdict
    assert assert_conserved(lineage, kill.run_id, N_ROWS)["schema"] == 1
    trainings = lineage.query(
        "SELECT training_run_id, status FROM training_runs WHERE run_id = ?", [kill.run_id]
    )
    assert len(trainings) == (point not in ("curated", "snapshot"))
    for t in trainings:  # an unfinished training leaves no adapter folder, whole or half
        if t["status"] != "completed":
            assert t["status"] == "abandoned"
            assert not list((chain.workspace / "adapters").glob(t["training_run_id"] + "*"))
    if point == "checkpoint_saved":  # died mid-training with a checkpoint: the next run resumed
        assert kill.checkpoints == ["checkpoint-2"]
        (t,) = trainings
        assert t["status"] == "abandoned"
        resumed = lineage.query(
            "SELECT a.path FROM adapters a JOIN training_runs t USING (training_run_id) "
            "WHERE t.run_id = ?", [chain.kills["adapter_recorded"].run_id]
        )  # fmt: skip
        manifest = json.loads((Path(resumed[0]["path"]) / "manifest.json").read_text())
        assert manifest["resumed_from_step"] == 2 and manifest["steps"] == 4


@pytest.mark.slow
def test_the_run_after_the_kills_finishes_and_nothing_is_duplicated(chain):
    assert chain.final.returncode in (0, 3), chain.final.stdout[-3000:] + chain.final.stderr
    lineage = Lineage(chain.workspace / "lineage.duckdb")
    statuses = {r["run_id"]: r["status"] for r in lineage.query("SELECT run_id, status FROM runs")}
    killed = {k.run_id for k in chain.kills.values()}
    assert set(statuses) == killed | {chain.final_run_id}
    assert {statuses[run_id] for run_id in killed} == {"abandoned"}
    assert statuses[chain.final_run_id] in ("promoted", "refused")
    assert assert_conserved(lineage, chain.final_run_id, N_ROWS)["schema"] == 1
    (n,) = lineage.query("SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM records")
    assert n["n"] == n["d"] == N_GOOD
    (snap,) = lineage.query("SELECT count(DISTINCT snapshot_id) AS n FROM snapshots")
    assert snap["n"] == 1  # the same rows each time: one snapshot, not one per run
    adapters = lineage.query("SELECT adapter_id, path FROM adapters")
    completed = lineage.query("SELECT count(*) AS n FROM training_runs WHERE status = 'completed'")
    assert 1 <= len(adapters) <= completed[0]["n"]  # one per completed training, or fewer: the
    # same job trained again can give the same weights, recorded once
    on_disk = {p.name for p in (chain.workspace / "adapters").iterdir()}
    recorded = {Path(a["path"]).name for a in adapters}
    assert not any(name.endswith(".partial") for name in on_disk)
    assert recorded <= on_disk
    for a in adapters:  # each recorded folder is whole: its manifest names its weights
        manifest = json.loads((Path(a["path"]) / "manifest.json").read_text())
        assert manifest["adapter_id"] == a["adapter_id"]
    for table in ONCE_PER_RUN:  # a run's rows once, however often the run before it died
        dupes = lineage.query(
            f"SELECT run_id, count(*) - count(DISTINCT ({ONCE_PER_RUN[table]})) AS extra "
            f"FROM {table} "
            "GROUP BY run_id HAVING extra > 0"
        )
        assert dupes == [], (table, dupes)
    assert not list((chain.workspace / "checkpoints").glob("*/checkpoint-*"))  # adapter saved
