"""Sequential evaluation end to end on a tiny random model: a task whose gate is conclusive at
the first look stops there for base and adapter, records the items it used and the look, and
decides as the fixed-size run does; the base's scores of the items it answered are cached and
grow from run to run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from tunegate.config import parse_config
from tunegate.evaluation.stage import evaluate_general_recorded
from tunegate.lineage import Lineage
from tunegate.models import BaseModel, sha256_dir
from tunegate.release.gates.general_drop import GeneralDrop
from tunegate.release.promote import decide_promotion
from tunegate.release.registry import release_check
from tunegate.release.report import write_eval_report
from tunegate.training.train import TrainResult

pytestmark = pytest.mark.integration


def noop_adapter(base: BaseModel, out: Path) -> TrainResult:
    """A LoRA with B = 0 (peft's init): adapter = base, the clearest pass there is."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base.path)
    get_peft_model(model, LoraConfig(r=4, target_modules="all-linear")).save_pretrained(out)
    return TrainResult(out, sha256_dir(out), 0, {})


def config_for(sequential: bool):
    general = {"tasks": ["piqa"], "limit": 30, "sequential": {"enabled": sequential, "chunk": 10}}
    return parse_config({"data": {"sources": [{"path": "x"}]}, "eval": {"general": general}},
                        root=REPO)  # fmt: skip


def test_a_conclusive_task_stops_early_and_decides_as_the_fixed_size_run(tiny_base_model,
                                                                         tmp_path):  # fmt: skip
    sequential, fixed = config_for(True), config_for(False)
    noop = noop_adapter(tiny_base_model, tmp_path / "noop")
    lineage = Lineage(":memory:")
    lineage.record_adapter(noop.adapter_id, "train-0", str(noop.adapter_dir),
                           tiny_base_model.sha256, "snap", "cfg")  # fmt: skip
    base, early = evaluate_general_recorded(sequential, lineage, "run", tiny_base_model, noop)

    # 1. Base and adapter answered the first chunk of 10 of the 30 items, and stopped there.
    assert (
        base[0].n == 10
        and early[0].n == 10
        and (early[0].look.index, early[0].look.looks) == (1, 3)
    )
    assert [s.item_id for s in base[0].samples] == [s.item_id for s in early[0].samples]
    assert {r["n"] for r in lineage.eval_results("run")} == {10}

    # The fixed-size run does not take the cached 10 for the 30 items it needs; it records
    # all 30 under the same key, and the next sequential run asks the base for nothing.
    whole_base, whole = evaluate_general_recorded(fixed, lineage, "fixed", tiny_base_model, noop)
    assert whole_base[0].n == 30 and whole_base[0].seconds > 0
    assert whole[0].n == 30 and whole[0].look is None
    again_base, again = evaluate_general_recorded(sequential, lineage, "again", tiny_base_model,
                                                  noop)  # fmt: skip
    assert again_base[0].n == 30 and again_base[0].seconds == 0 and again[0].n == 10

    # 2. Same decision as the fixed-size gate on every item; the early one says where it stopped.
    (gate,) = GeneralDrop().evaluate(sequential, base, early)
    (full,) = GeneralDrop().evaluate(fixed, whole_base, whole)
    assert gate.outcome == full.outcome == "pass" and (gate.n, full.n) == (10, 30)
    assert "sequential look 1 of 3: 10 of 30 items" in gate.reason and full.look is None

    # 3. Recorded with the gate, shown by `tunegate gate check` and in the eval report.
    decision = decide_promotion(lineage, "run", noop.adapter_id, noop.adapter_dir, "staging",
                                [gate])  # fmt: skip
    (row,) = lineage.query("SELECT n_items, look, looks FROM gate_results")
    assert row == {"n_items": 10, "look": 1, "looks": 3}
    check = release_check(lineage, alias="staging")
    assert check.ok and "(items: general_piqa 10 at look 1 of 3)" in check.reason
    html = write_eval_report(tmp_path, "run", noop.adapter_id, base, early, [gate], decision)
    assert "10 of 30, look 1/3" in html.read_text()
