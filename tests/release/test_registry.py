"""Registry: promotion only with every gate passed on the exact files, tamper refusal, forced
promotions with who and why, history, rollback, and `tunegate gate check` exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.lineage import Lineage
from tunegate.models import sha256_dir
from tunegate.release.gates import GateResult
from tunegate.release.promote import decide_promotion
from tunegate.release.registry import RegistryError, promote, release_check, rollback

pytestmark = pytest.mark.integration

PASS = GateResult("heldout_gain", "pass", 0.5, 0.2, "gain +0.500 passes")
FAIL = GateResult("general_piqa", "fail", -0.2, -0.02, "piqa dropped 20 points")
UNSURE = GateResult("general_arc_easy", "inconclusive", 0.01, -0.02, "arc_easy straddles")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def lineage(workspace: Path) -> Lineage:
    return Lineage(workspace / "lineage.duckdb")


def make_adapter(lineage: Lineage, root: Path, name: str) -> tuple[str, Path]:
    """A registered adapter directory: weights, config and a manifest, as training leaves it."""
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(name.encode() * 100)
    (path / "adapter_config.json").write_text('{"r": 16, "lora_alpha": 32}')
    (path / "manifest.json").write_text('{"run": "' + name + '"}')
    adapter_id = sha256_dir(path)
    lineage.record_adapter(adapter_id, f"train-{name}", str(path), "base", "snap", "cfg")
    return adapter_id, path


def gated(lineage: Lineage, root: Path, name: str, *gates: GateResult) -> tuple[str, Path]:
    """An adapter whose gates ran in a pipeline run (nothing promoted: alias `candidates`)."""
    adapter_id, path = make_adapter(lineage, root, name)
    decide_promotion(lineage, f"run-{name}", adapter_id, path, "candidates", list(gates))
    return adapter_id, path


def test_promotion_needs_every_gate_passed(lineage, tmp_path):
    bad, _ = gated(lineage, tmp_path, "bad", PASS, FAIL)
    refused = promote(lineage, bad, "production")
    assert not refused.promoted and refused.decision == "refused"
    assert "gate general_piqa failed (piqa dropped 20 points)" in refused.reason
    assert lineage.alias_target("production") is None

    good, _ = gated(lineage, tmp_path, "good", PASS)
    assert promote(lineage, good[:10], "production").promoted  # an id prefix is enough
    assert lineage.alias_target("production") == good
    history = lineage.alias_history("production")
    assert [h["decision"] for h in history] == ["refused", "promoted"]
    assert history[1]["files_sha256"] and history[1]["previous_adapter_id"] is None


def test_inconclusive_is_refused_unless_the_alias_policy_accepts_it(lineage, workspace, tmp_path):
    adapter_id, _ = gated(lineage, tmp_path, "unsure", PASS, UNSURE)
    recorded = lineage.query("SELECT gate, passed, outcome FROM gate_results ORDER BY gate")
    assert [(r["gate"], r["passed"], r["outcome"]) for r in recorded] == [
        ("general_arc_easy", False, "inconclusive"), ("heldout_gain", True, "pass")]  # fmt: skip
    refused = promote(lineage, adapter_id, "production")
    assert not refused.promoted and "gate general_arc_easy inconclusive" in refused.reason

    taken = promote(lineage, adapter_id, "staging", accept_inconclusive=True)
    assert taken.promoted
    assert "general_arc_easy inconclusive and accepted by staging" in taken.reason
    (move,) = lineage.alias_history("staging")
    assert move["accepted_inconclusive"] == "general_arc_easy"
    w = ["--workspace", str(workspace)]
    code, out, _ = run_cli("gate", "check", "--alias", "staging", *w)
    assert code == 0 and "general_arc_easy inconclusive, accepted by staging's policy" in out
    code, _, err = run_cli("gate", "check", adapter_id, *w)  # no alias: no policy, pass only
    assert code == 1 and "gate general_arc_easy inconclusive" in err

    failed, _ = gated(lineage, tmp_path, "failed", PASS, UNSURE, FAIL)  # never a fail
    decision = promote(lineage, failed, "staging", accept_inconclusive=True)
    assert not decision.promoted and "gate general_piqa failed" in decision.reason


def test_never_gated_adapter_is_refused(lineage, tmp_path):
    adapter_id, _ = make_adapter(lineage, tmp_path, "ungated")
    decision = promote(lineage, adapter_id, "production")
    assert not decision.promoted and "no gate has judged this adapter" in decision.reason


def test_a_changed_adapter_file_is_refused(lineage, tmp_path):
    adapter_id, path = gated(lineage, tmp_path, "a", PASS)
    (path / "adapter_config.json").write_text('{"r": 16, "lora_alpha": 320}')  # same weights
    decision = promote(lineage, adapter_id, "production")
    assert not decision.promoted
    assert "adapter files changed since the gates judged them" in decision.reason


def test_a_changed_manifest_field_that_export_reads_is_refused(lineage, workspace, tmp_path):
    adapter_id, path = gated(lineage, tmp_path, "m", PASS)
    manifest = '{"run": "m", "quantization": "nf4", "created_at": "%s"}'
    (path / "manifest.json").write_text(manifest % "monday")
    decide_promotion(lineage, "run-m2", adapter_id, path, "candidates", [PASS])
    assert promote(lineage, adapter_id, "production").promoted
    (path / "manifest.json").write_text(manifest % "tuesday")  # metadata only: still the same
    assert release_check(lineage, alias="production").ok
    (path / "manifest.json").write_text(manifest.replace("nf4", "none") % "monday")
    check = release_check(lineage, alias="production")
    assert not check.ok and "differ from the ones registered" in check.reason
    res = CliRunner().invoke(app, ["gate", "check", "--alias", "production", "-w", str(workspace)])
    assert res.exit_code != 0


def test_changed_weights_are_refused_even_with_force(lineage, tmp_path):
    adapter_id, path = gated(lineage, tmp_path, "a", PASS)
    (path / "adapter_model.safetensors").write_bytes(b"other weights")
    decision = promote(lineage, adapter_id, "production", force=True, reason="hotfix")
    assert not decision.promoted and "not the adapter id" in decision.reason


def test_force_needs_a_reason_and_records_who_and_why(lineage, tmp_path, monkeypatch):
    adapter_id, _ = gated(lineage, tmp_path, "a", FAIL)
    with pytest.raises(RegistryError, match="--force needs --reason"):
        promote(lineage, adapter_id, "production", force=True)
    monkeypatch.setenv("TUNEGATE_ACTOR", "release-bot")
    decision = promote(lineage, adapter_id, "production", force=True, reason="incident 42")
    assert decision.promoted and decision.decision == "forced"
    (move,) = lineage.alias_history("production")
    assert move["actor"] == "release-bot" and move["created_at"] is not None
    assert move["reason"].startswith("forced by release-bot: incident 42; overriding: gate ")
    # The release gate still says no: the gates did not pass.
    check = release_check(lineage, alias="production")
    assert not check.ok and "gate general_piqa failed" in check.reason


def test_rollback_walks_back_through_the_history(lineage, tmp_path):
    ids = [gated(lineage, tmp_path, name, PASS)[0] for name in ("v1", "v2", "v3")]
    for adapter_id in ids:
        assert promote(lineage, adapter_id, "production").promoted
    assert rollback(lineage, "production", "v3 answers in French").adapter_id == ids[1]
    assert lineage.alias_target("production") == ids[1]
    assert rollback(lineage, "production").adapter_id == ids[0]
    with pytest.raises(RegistryError, match="no earlier adapter"):
        rollback(lineage, "production")
    moves = lineage.alias_history("production")
    assert [m["decision"] for m in moves] == ["promoted"] * 3 + ["rollback"] * 2
    assert moves[3]["previous_adapter_id"] == ids[2] and "French" in moves[3]["reason"]
    with pytest.raises(RegistryError, match="points at nothing"):
        rollback(lineage, "staging")


def test_rollback_refuses_an_adapter_whose_files_changed(lineage, tmp_path):
    old, old_path = gated(lineage, tmp_path, "old", PASS)
    new, _ = gated(lineage, tmp_path, "new", PASS)
    promote(lineage, old, "production")
    promote(lineage, new, "production")
    (old_path / "tokenizer.json").write_text("{}")  # a file added after promotion
    with pytest.raises(RegistryError, match="changed since it was promoted"):
        rollback(lineage, "production")
    assert lineage.alias_target("production") == new


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_gate_check_exit_codes(lineage, workspace, tmp_path):
    w = ["--workspace", str(workspace)]
    adapter_id, path = gated(lineage, tmp_path, "a", PASS)
    promote(lineage, adapter_id, "production")

    code, out, _ = run_cli("gate", "check", "--alias", "production", *w)
    assert code == 0 and out.startswith("release gate: pass production -> ")
    assert run_cli("gate", "check", adapter_id[:12], *w)[0] == 0
    copy = tmp_path / "artifact"  # a CI artifact: a copy of the adapter directory
    copy.mkdir()
    for f in path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert run_cli("gate", "check", str(copy), *w)[0] == 0

    (path / "adapter_config.json").write_text("{}")  # tampered after promotion
    code, _, err = run_cli("gate", "check", "--alias", "production", *w)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("release gate: FAIL production -> ") and "differ from" in err
    assert run_cli("gate", "check", str(copy), *w)[0] == 0  # the untouched copy still matches

    code, _, err = run_cli("gate", "check", "--alias", "staging", *w)
    assert code == 1 and "alias 'staging' points at no adapter" in err
    failed, _ = gated(lineage, tmp_path, "b", FAIL)
    code, _, err = run_cli("gate", "check", failed, *w)
    assert code == 1 and "gate general_piqa failed" in err
    assert run_cli("gate", "check", "deadbeef", *w)[0] == 1  # unknown adapter
    assert run_cli("gate", "check", adapter_id, "--alias", "production", *w)[0] == 2


def test_promote_rollback_and_registry_commands(lineage, workspace, tmp_path):
    w = ["--workspace", str(workspace)]
    first, _ = gated(lineage, tmp_path, "first", PASS)
    second, _ = gated(lineage, tmp_path, "second", FAIL)
    assert run_cli("promote", first, "--alias", "production", *w)[0] == 0
    code, out, _ = run_cli("promote", second, "--alias", "production", *w)
    assert code == 3 and "refused" in out
    assert run_cli("promote", second, "--force", *w)[0] == 1  # no reason given
    code, out, _ = run_cli("promote", second, "--force", "--reason", "demo", *w)
    assert code == 0 and "forced" in out

    code, out, _ = run_cli("registry", "list", *w)
    assert code == 0 and "production" in out and second[:12] in out
    code, out, _ = run_cli("registry", "show", "production", *w)
    assert code == 0 and "release gate: FAIL" in out
    code, out, _ = run_cli("rollback", "--alias", "production", "--reason", "bad", *w)
    assert code == 0 and first[:12] in out
    code, out, _ = run_cli("registry", "history", "production", *w)
    for decision in ("promoted", "refused", "forced", "rollback"):
        assert decision in out
