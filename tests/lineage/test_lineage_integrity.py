"""The lineage file under damage: refused before anything writes into it, readable read-only,
backed up and restored.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.data.verdicts import Verdict
from tunegate.lineage import Lineage, LineageError

pytestmark = pytest.mark.integration


def filled(workspace: Path, rows: int = 100_000) -> Lineage:
    lineage = Lineage(workspace / "lineage.duckdb")
    run = lineage.start_run("test", "hash", "{}")
    lineage.record_verdicts(run, [Verdict("d.jsonl", i, f"r{i}", "curate", "accepted", None,
                                          "x" * 40) for i in range(1, rows + 1)])  # fmt: skip
    lineage.record_source(run, "d.jsonl", "sha", "auto", "human", rows)
    lineage.end_run(run, "completed")
    return lineage


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_a_truncated_file_is_refused_with_the_way_out_and_left_untouched(tmp_path):
    ws = tmp_path / "ws"
    db = filled(ws).path
    data = Path(db).read_bytes()
    Path(db).write_bytes(data[: len(data) // 2])
    before = Path(db).read_bytes()
    with pytest.raises(LineageError, match=r"cut short.*will not write into it.*db backup"):
        Lineage(db)
    for args in (["verdicts"], ["registry", "list"], ["gate", "check", "--alias", "production"]):
        res = cli(*args, "-w", str(ws))
        assert res.exit_code == 1 and "is damaged" in res.output, (args, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit)
    check = cli("db", "check", "-w", str(ws))
    assert check.exit_code == 1 and "cut short" in check.output
    assert Path(db).read_bytes() == before  # nothing wrote on top
    # what is readable is saved (here the tables whose blocks lie in the first half)
    res = cli("db", "backup", str(tmp_path / "rescue"), "-w", str(ws))
    assert "unreadable: row_verdicts" in res.output
    assert (tmp_path / "rescue" / "meta.parquet").exists()


def test_backup_and_restore_round_trip(tmp_path):
    ws = tmp_path / "ws"
    lineage = filled(ws, rows=5000)
    assert cli("db", "check", "--deep", "-w", str(ws)).exit_code == 0
    res = cli("db", "backup", str(tmp_path / "backup"), "-w", str(ws))
    assert res.exit_code == 0 and "backed up" in res.output
    Path(lineage.path).write_bytes(b"\0" * 1000)  # lost
    res = cli("db", "restore", str(tmp_path / "backup"), "-w", str(ws))
    assert res.exit_code == 1 and "move it aside" in res.output
    Path(lineage.path).rename(ws / "lineage.damaged")
    res = cli("db", "restore", str(tmp_path / "backup"), "-w", str(ws))
    assert res.exit_code == 0, res.output
    restored = Lineage(ws / "lineage.duckdb")
    assert restored.verdict_counts(restored.latest_finished_run()["run_id"]) == {"accepted": 5000}
    res = cli("verdicts", "-w", str(ws), "--limit", "2")
    assert res.exit_code == 0 and "d.jsonl" in res.output


def test_read_only_commands_work_on_a_read_only_workspace(tmp_path):
    src = tmp_path / "src"
    filled(src / "ws", rows=10)
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot bind-mount here (needs root): " + mounted.stderr.decode().strip())
    try:
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True)
        if remount.returncode != 0:
            pytest.skip("cannot remount read-only: " + remount.stderr.decode().strip())
        ws = str(ro / "ws")
        for args in (["verdicts"], ["registry", "list"], ["db", "check", "--deep"]):
            res = cli(*args, "-w", ws)
            assert res.exit_code == 0, (args, res.output)
        res = cli("gate", "check", "--alias", "production", "-w", ws)
        assert res.exit_code == 1 and "points at no adapter" in res.output
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    shutil.rmtree(ro, ignore_errors=True)
