"""Evaluation: held-out scoring, prompt parity with training, end-to-end runs of the held-out
task and the general suite, and the base-model cache key.

The end-to-end tests use a tiny randomly initialised Llama saved with the real SmolLM2
tokenizer (`tiny_base_model` of conftest.py): real prompts, fast model.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from tunegate.config import parse_config
from tunegate.evaluation.evaluate import (
    LOGLIK_TASK,
    METRICS,
    TASK,
    TASK_YAML,
    EvalError,
    cache_key,
    evaluate,
    general_tasks,
    heldout_tasks,
    run_tasks,
)
from tunegate.models import BaseModel, sha256_dir

pytestmark = pytest.mark.integration

# The system message of the training chats; the eval must send exactly this.
SYSTEM = "Classify the support ticket. Reply with JSON only, keys: intent, priority, order_id."

ROWS = [
    ("Refund order A48213 now, it arrived broken!", "refund", "high", "A48213"),
    ("How do I change my password?", "account", "low", None),
    # Text that must reach the model verbatim: Jinja-like braces, JSON, trailing newline.
    ('Invoice says {{ total }} but {"paid": true}\n', "billing", "medium", None),
    ("  Où est ma commande B77? Merci  ", "shipping", "medium", "B77"),
    ("Cancel C1 please", "cancel", "high", "C1"),
]


def load_scoring():
    """The task's utils.py, loaded by path the way lm-eval's `!function` does."""
    spec = importlib.util.spec_from_file_location("heldout_utils", TASK_YAML.parent / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def target(intent: str, priority: str, order_id: str | None) -> str:
    return json.dumps({"intent": intent, "priority": priority, "order_id": order_id})


def write_heldout(path: Path) -> Path:
    with path.open("w") as f:
        for i, (ticket, intent, priority, order_id) in enumerate(ROWS):
            row = {
                "id": f"heldout-{i:03d}",
                "ticket": ticket,
                "target": target(intent, priority, order_id),
                "intent": intent,
                "priority": priority,
                "order_id": order_id,
            }
            f.write(json.dumps(row) + "\n")
    return path


def make_config(root: Path, **eval_settings):
    data = {"data": {"sources": [{"path": "raw"}]}, "eval": eval_settings}
    return parse_config(data, root=root)


# --- (a) scoring -------------------------------------------------------------------------

GOLD = target("refund", "high", "A48213")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (GOLD, (1.0, 1.0, 1.0)),
        ('  {"order_id": "A48213", "priority": "high", "intent": "refund"}\n', (1.0, 1.0, 1.0)),
        ('{"intent": "refund", "priority": "low", "order_id": "A48213"}', (2 / 3, 1.0, 0.0)),
        ('{"intent": "refund", "priority": "high"}', (2 / 3, 0.0, 0.0)),  # missing key
        ('{"intent": "refund", "priority": "high", "order_id": "A48213", "x": 1}', (1.0, 0.0, 1.0)),
        ('{"intent": "Refund", "priority": "high", "order_id": 48213}', (1 / 3, 1.0, 0.0)),
        ('```json\n{"intent": "refund", "priority": "high", "order_id": "A48213"}\n```', (0, 0, 0)),
        ('{"intent": "refund", "priority": "high"', (0.0, 0.0, 0.0)),  # truncated
        ('["refund", "high", "A48213"]', (0.0, 0.0, 0.0)),  # JSON, but not an object
        ("", (0.0, 0.0, 0.0)),
    ],
)
def test_score_reply(reply, expected):
    scores = load_scoring().score_reply(reply, GOLD)
    assert tuple(scores[m] for m in METRICS) == pytest.approx(expected)


@pytest.mark.unit
def test_null_order_id_matches_null():
    gold = target("account", "low", None)
    scoring = load_scoring()
    assert scoring.score_reply(gold, gold)["exact_match"] == 1.0
    assert scoring.score_reply(target("account", "low", "null"), gold)["field_accuracy"] == 2 / 3


@pytest.mark.unit
def test_process_results_reads_the_target_column():
    doc = {"id": "heldout-000", "ticket": "t", "target": GOLD}
    assert load_scoring().process_results(doc, [GOLD]) == {
        "field_accuracy": 1.0,
        "json_valid": 1.0,
        "exact_match": 1.0,
    }


# --- fixtures: tiny model and adapter (the real tokenizer: tests/conftest.py) -----------


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_base_model) -> Path:
    return tiny_base_model.path


@pytest.fixture(scope="module")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with random (non-zero) B, so it visibly changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    path = tmp_path_factory.mktemp("tiny-adapter")
    get_peft_model(model, lora).save_pretrained(path)
    return path


# --- (b) prompt parity with training -----------------------------------------------------


def test_prompt_is_the_training_prompt(tokenizer, tiny_model_dir, tmp_path):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    write_heldout(tmp_path / "heldout.jsonl")
    config = make_config(tmp_path, heldout_path="heldout.jsonl", max_new_tokens=2, batch_size=2)
    generate, loglik = heldout_tasks(config)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    results, _ = run_tasks(model, tokenizer, [generate])
    prompts = {s["doc"]["ticket"]: s["arguments"][0][0] for s in results["samples"][TASK]}
    assert len(prompts) == len(ROWS)
    # The reference log-likelihood sees the same prompt, the reference appended verbatim.
    results, _ = run_tasks(model, tokenizer, [loglik])
    scored = {s["doc"]["ticket"]: s["arguments"][0] for s in results["samples"][LOGLIK_TASK]}
    for ticket, (context, continuation) in scored.items():
        assert context == prompts[ticket]
        assert continuation == next(target(*r[1:]) for r in ROWS if r[0] == ticket)

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    for ticket, intent, priority, order_id in ROWS:
        chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket}]
        expected = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert prompts[ticket] == expected
        # Token level, through the encoder lm-eval generates with: no extra BOS.
        expected_ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
        ids, _ = lm.tok_batch_encode([prompts[ticket]])
        assert ids[0].tolist() == expected_ids
        assert expected_ids.count(tokenizer.bos_token_id) == 3  # system, user, assistant turns
        # Training renders the full chat; the eval prompt is its prefix, token for token.
        answer = {"role": "assistant", "content": target(intent, priority, order_id)}
        full_ids = tokenizer.apply_chat_template([*chat, answer])["input_ids"]
        assert full_ids[: len(expected_ids)] == expected_ids


# --- (c) end to end on the tiny model ----------------------------------------------------


def test_evaluate_heldout_end_to_end(tiny_model_dir, tiny_adapter_dir, tmp_path):
    write_heldout(tmp_path / "heldout.jsonl")
    config = make_config(
        tmp_path, heldout_path="heldout.jsonl", max_items=4, max_new_tokens=8, batch_size=2
    )
    base = BaseModel(ref=str(tiny_model_dir), path=tiny_model_dir, sha256="tiny")

    outcome, loglik = evaluate(base, None, "base", heldout_tasks(config))
    assert (outcome.subject, outcome.task, outcome.n) == ("base", TASK, 4)
    assert (loglik.task, loglik.n, loglik.primary) == (LOGLIK_TASK, 4, "ref_loglik")
    assert loglik.metrics["ref_loglik"][0] < 0 and loglik.metrics["ref_loglik"][1] > 0
    assert set(outcome.metrics) == set(METRICS)
    for value, stderr in outcome.metrics.values():
        assert 0.0 <= value <= 1.0
        assert stderr is None or stderr >= 0.0
    assert [s[0] for s in outcome.samples] == [f"heldout-{i:03d}" for i in range(4)]
    assert all(0.0 <= s[3] <= 1.0 for s in outcome.samples)
    assert outcome.samples[0][2] == target(*ROWS[0][1:])
    assert outcome.seconds > 0

    adapted, adapted_loglik = evaluate(base, tiny_adapter_dir, "adapter", heldout_tasks(config))
    assert (adapted.subject, adapted.n) == ("adapter", 4)
    # The adapter must be applied, not silently ignored.
    assert [s[1] for s in adapted.samples] != [s[1] for s in outcome.samples]
    assert [s.score for s in adapted_loglik.samples] != [s.score for s in loglik.samples]


@pytest.mark.unit
def test_missing_heldout_file_names_the_path(tmp_path):
    config = make_config(tmp_path, heldout_path="nowhere/heldout.jsonl")
    with pytest.raises(EvalError, match=str(tmp_path / "nowhere" / "heldout.jsonl")):
        heldout_tasks(config)


# --- (d) the general suite on the tiny model -----------------------------------------------


def test_general_suite_scores_every_item_of_the_shipped_files(tiny_model_dir, tmp_path):
    config = make_config(tmp_path, general={"limit": 6, "batch_size": 8})
    base = BaseModel(ref=str(tiny_model_dir), path=tiny_model_dir, sha256="tiny")
    outcomes = evaluate(base, None, "base", general_tasks(config))

    names = ["tunegate_piqa", "tunegate_arc_easy", "tunegate_hellaswag"]
    assert [o.task for o in outcomes] == names
    for o in outcomes:
        assert o.n == 6 and o.primary == "p_gold"  # the general gate's default score
        assert set(o.metrics) == {"p_gold", "acc", "acc_norm"}
        assert all(stderr is not None for _, stderr in o.metrics.values())
        first = o.samples[0]
        assert first.item_id.startswith(o.task.removeprefix("tunegate_") + "-")
        assert set(first.scores) == {"p_gold", "acc", "acc_norm"}
        assert first.score == first.scores["p_gold"]
        assert sum(s.score for s in o.samples) / o.n == pytest.approx(o.metrics["p_gold"][0])
        for s in o.samples:  # p_gold: softmax of the choices' log-likelihoods at the gold one
            lls = s.choice_logliks
            assert len(lls) == (2 if o.task == "tunegate_piqa" else 4)
            gold = s.scores["p_gold"]
            assert 0.0 <= gold <= 1.0
            top = 1.0 / sum(math.exp(x - max(lls)) for x in lls)  # the likeliest choice's
            assert s.scores["acc"] == (1.0 if gold == pytest.approx(top) else 0.0)
    piqa = outcomes[0].samples[0]  # zero-shot, lm-eval's PIQA prompt, the choice after a space
    assert piqa.prompt.startswith("Question: ") and piqa.prompt.endswith("\nAnswer:")
    assert (piqa.scores["acc"] == 1.0) == (piqa.prediction == piqa.target)  # the acc pick


def test_cache_key_changes_with_what_the_scores_depend_on(tiny_model_dir, tmp_path):
    base = BaseModel(str(tiny_model_dir), tiny_model_dir, sha256_dir(tiny_model_dir))
    piqa = general_tasks(make_config(tmp_path, general={"limit": 10}))[0]
    key = cache_key(piqa, base)
    assert cache_key(piqa, base) == key
    assert cache_key(general_tasks(make_config(tmp_path, general={"limit": 20}))[0], base) != key
    assert cache_key(piqa, BaseModel(base.ref, base.path, "other weights")) != key
    data = tmp_path / "piqa.jsonl"
    data.write_text(piqa.data.read_text().replace("Question", "Q", 1))
    assert cache_key(replace(piqa, data=data), base) != key
    other = "bfloat16" if piqa.dtype == "float32" else "float32"
    assert cache_key(replace(piqa, dtype=other), base) != key  # bf16 scores are not fp32 scores


def test_eval_dtype_follows_the_training_rule(tiny_model_dir, tiny_adapter_dir, tmp_path, cpu_bf16):
    """`auto`: bf16 with native bf16, else fp32; base and adapter in the same one."""
    config = make_config(tmp_path, general={"tasks": ["piqa"], "limit": 4, "batch_size": 8})
    expected = "bfloat16" if cpu_bf16 == "on" else "float32"
    (task,) = general_tasks(config)
    assert task.dtype == expected and task.settings()["dtype"] == expected
    assert general_tasks(make_config(tmp_path, compute_dtype="float32"))[0].dtype == "float32"
    base = BaseModel(ref=str(tiny_model_dir), path=tiny_model_dir, sha256="tiny")
    (base_out,) = evaluate(base, None, "base", [task])
    (adapter_out,) = evaluate(base, tiny_adapter_dir, "adapter", [task])
    assert base_out.dtype == adapter_out.dtype == expected
    assert base_out.n == adapter_out.n == 4
