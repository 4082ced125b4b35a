"""The gates bite: a no-op adapter is refused by the held-out gain gate, and an adapter that
damages general capability is refused by the general gate (real SmolLM2, marked slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from tunegate.config import parse_config
from tunegate.evaluation.stage import evaluate_recorded
from tunegate.lineage import Lineage
from tunegate.models import BaseModel, sha256_dir
from tunegate.release.gates import per_item
from tunegate.release.gates.general_drop import GeneralDrop, general_drop_gate
from tunegate.release.stage import gate_and_promote
from tunegate.training.train import TrainResult

pytestmark = pytest.mark.integration


def lora_adapter(base: BaseModel, out: Path, *, random_b: bool, alpha: int = 32) -> TrainResult:
    """A LoRA on every linear layer: B = 0 (peft's init, a no-op) or random (damaging)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base.path)
    lora = LoraConfig(r=16, lora_alpha=alpha, target_modules="all-linear",
                      init_lora_weights=not random_b)  # fmt: skip
    get_peft_model(model, lora).save_pretrained(out)
    return TrainResult(out, sha256_dir(out), 0, {})


def config_for(root: Path, **eval_settings: object):
    """Settings rooted at the repository: the shipped held-out set and general suite."""
    return parse_config({"data": {"sources": [{"path": "x"}]}, "eval": eval_settings}, root=REPO)


def test_a_no_op_adapter_fails_the_heldout_gain_gate(tiny_base_model, tmp_path):
    config = config_for(tmp_path, max_items=4, max_new_tokens=4, general={"limit": 4})
    noop = lora_adapter(tiny_base_model, tmp_path / "noop", random_b=False)
    lineage = Lineage(":memory:")
    lineage.record_adapter(
        noop.adapter_id, "train-0", str(noop.adapter_dir), tiny_base_model.sha256, "snap", "cfg"
    )  # as training records it
    evals = {}
    for subject, adapter in (("base", None), ("adapter", noop)):
        evals[subject] = [o for suite in ("heldout", "general") for o in
                          evaluate_recorded(config, lineage, "run", tiny_base_model,
                                                   adapter, suite)]  # fmt: skip

    gates, decision = gate_and_promote(config, lineage, "run", noop, evals["base"],
                                              evals["adapter"])  # fmt: skip
    verdicts = {g.gate: (g.outcome, g.value) for g in gates}
    assert verdicts["heldout_gain"] == ("fail", 0.0)  # same outputs: shown no gain
    for task in ("piqa", "arc_easy", "hellaswag"):
        assert verdicts[f"general_{task}"] == ("pass", 0.0)  # adapter = base: never inconclusive
    assert not decision.promoted and decision.reason.startswith("refused: gate heldout_gain")
    recorded = lineage.query("SELECT gate, passed, reason, files_sha256 FROM gate_results")
    assert {r["gate"] for r in recorded} == set(verdicts)
    assert all(r["reason"] and r["files_sha256"] for r in recorded)
    assert lineage.alias_target("production") is None


@pytest.mark.slow
def test_an_adapter_that_damages_general_capability_is_refused(embedded_model_dir, tmp_path):
    """Random LoRA weights (alpha / r = 2) on SmolLM2-135M: PIQA falls towards chance. The
    default gate (p_gold) does not pass it; on acc_norm the same items show it fails."""
    base = BaseModel(str(embedded_model_dir), embedded_model_dir, sha256_dir(embedded_model_dir))
    damaging = lora_adapter(base, tmp_path / "damaging", random_b=True)
    config = config_for(tmp_path, general={"tasks": ["piqa"], "limit": 100})
    lineage = Lineage(":memory:")
    before = evaluate_recorded(config, lineage, "run", base, None, "general")
    after = evaluate_recorded(config, lineage, "run", base, damaging, "general")

    piqa = before[0].metrics["acc_norm"][0]
    assert piqa > 0.6  # the base model is clearly above chance (0.5)...
    assert after[0].metrics["acc_norm"][0] < piqa - 0.1  # ...the damaged one is not
    (gate,) = GeneralDrop().evaluate(config, before, after)
    print(gate.reason)
    assert gate.outcome != "pass" and gate.low < -0.02 and gate.n == 100  # refused by default
    acc_norm = general_drop_gate(
        "piqa", per_item(before[0], "acc_norm"), per_item(after[0], "acc_norm"),
        config.gates.general.model_copy(update={"metric": "acc_norm"}),
    )  # fmt: skip
    print(acc_norm.reason)
    assert acc_norm.outcome == "fail" and ": FAIL" in acc_norm.reason
