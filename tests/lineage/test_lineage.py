import duckdb
import pytest

from tunegate.data.verdicts import Verdict
from tunegate.lineage import SCHEMA_VERSION, Lineage, LineageError

pytestmark = pytest.mark.unit


def test_schema_is_versioned_and_a_newer_file_is_refused(tmp_path):
    db = tmp_path / "l.duckdb"
    Lineage(db)
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(LineageError, match="schema version 99"):
        Lineage(db)


def test_writes_are_transactional(tmp_path):
    lin = Lineage(tmp_path / "l.duckdb")
    run = lin.start_run("test", "h", "{}")
    bad = [Verdict("f", 1, None, "curate", "accepted"),
           Verdict("f", "x", None, "c", "rejected")]  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(ValueError):  # the bad row fails the batch: the good row is not kept
        lin.record_verdicts(run, bad)
    assert lin.query("SELECT count(*) AS n FROM row_verdicts")[0]["n"] == 0
    lin.record_verdicts(run, bad[:1])
    assert lin.verdict_counts(run) == {"accepted": 1}


def test_promotion_moves_alias_and_refusal_does_not(tmp_path):
    lin = Lineage(tmp_path / "l.duckdb")
    lin.record_promotion("a1", "production", "promoted", "ok", "ci", None)
    lin.record_promotion("a2", "production", "refused", "gate failed", "ci", None)
    assert lin.alias_target("production") == "a1"
    decisions = lin.query("SELECT decision FROM promotions ORDER BY created_at")
    assert [r["decision"] for r in decisions] == ["promoted", "refused"]


def test_adapter_lookup_by_prefix(tmp_path):
    lin = Lineage(tmp_path / "l.duckdb")
    lin.record_adapter("abcdef", "t", "/p", "b", "s", "c")
    assert lin.adapter("abc")["adapter_id"] == "abcdef"
    with pytest.raises(LineageError, match="no adapter"):
        lin.adapter("zzz")


@pytest.mark.parametrize("version", ["1", "2"])
def test_an_older_lineage_file_is_migrated_in_place(tmp_path, version):
    """A version-1 or -2 workspace (before the review queue; before verdict matches and raw
    rows) opens, gains the new tables and columns, and keeps its rows."""
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [version])
    con.execute(
        "CREATE TABLE row_verdicts (run_id VARCHAR, source VARCHAR, source_row BIGINT, "
        "record_id VARCHAR, stage VARCHAR, status VARCHAR, reason VARCHAR, detail VARCHAR)"
    )
    con.execute("INSERT INTO row_verdicts VALUES ('r0', 'f', 1, NULL, 'curate', 'accepted', "
                "NULL, NULL)")  # fmt: skip
    con.close()
    lin = Lineage(db)
    lin.record_verdicts(
        "r1",
        [
            Verdict(
                "f",
                1,
                None,
                "near_dedup",
                "rejected",
                "near_duplicate",
                "d",
                duplicate_of="f:0",
                cluster_id="n-1",
                raw="{}",
            )
        ],
    )
    rows = lin.query("SELECT run_id, duplicate_of, cluster_id, raw FROM row_verdicts "
                     "ORDER BY run_id")  # fmt: skip
    assert rows == [
        {"run_id": "r0", "duplicate_of": None, "cluster_id": None, "raw": None},
        {"run_id": "r1", "duplicate_of": "f:0", "cluster_id": "n-1", "raw": "{}"},
    ]
    assert lin.query("SELECT value FROM meta")[0]["value"] == str(SCHEMA_VERSION)
    assert lin.review_items() == [] and lin.review_counts("r1") == {}  # version-2 tables exist
