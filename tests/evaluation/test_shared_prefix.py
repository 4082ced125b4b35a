"""The shared-prefix backend computes what lm-eval's HF backend computes, item by item.

On the tiny random Llama with the real SmolLM2 tokenizer (`tiny_base_model` of conftest.py),
fp32, 20 items of each shipped general task: the same per-choice log-likelihoods to 1e-4,
the same choice on every item, the same acc / acc_norm and p_gold.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tunegate.config import parse_config
from tunegate.evaluation.evaluate import (
    cache_key,
    evaluate,
    general_tasks,
    load_model,
    run_tasks,
    to_outcome,
)
from tunegate.evaluation.shared_prefix import Item, attention_mask, length_sorted_batches, pack

pytestmark = pytest.mark.integration


def make_config(root, **general):
    data = {"data": {"sources": [{"path": "raw"}]},
            "eval": {"compute_dtype": "float32", "general": general}}  # fmt: skip
    return parse_config(data, root=root)


def test_default_backend_is_lm_eval_and_the_backend_is_in_the_cache_key(tiny_base_model, tmp_path):
    (piqa,) = general_tasks(make_config(tmp_path, tasks=["piqa"]))
    assert piqa.backend == "lm_eval" and "backend" not in piqa.settings()  # old cache keys hold
    (fast,) = general_tasks(make_config(tmp_path, tasks=["piqa"], backend="shared_prefix"))
    assert fast.backend == "shared_prefix"
    assert cache_key(piqa, tiny_base_model) != cache_key(fast, tiny_base_model)


def test_packing_restarts_positions_after_the_context_and_isolates_choices():
    item = Item(context=[5, 6, 7], requests=[0, 1], continuations=[[8, 9], [10, 11, 12]])
    ids, positions, segments = pack([item], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 10, 11]]  # each continuation but its last token
    assert positions.tolist() == [[0, 1, 2, 3, 3, 4]]
    allowed = attention_mask(segments, torch.float32) == 0
    assert allowed[0, 0, 4].tolist() == [True, True, True, False, True, False]  # not choice 1
    assert allowed[0, 0, 5].tolist() == [True, True, True, False, True, True]


def test_batches_are_length_sorted_within_the_token_budget():
    items = [Item([1] * n, [i], [[2, 3]]) for i, n in enumerate([3, 9, 5, 9, 2])]
    batches = length_sorted_batches(items, tokens_per_pass=20)
    assert [[len(i) for i in b] for b in batches] == [[10, 10], [6, 4, 3]]


def test_shared_prefix_matches_lm_eval_on_every_choice(tiny_base_model, tmp_path):
    tasks = general_tasks(make_config(tmp_path, limit=20, batch_size=8))
    model, tokenizer = load_model(tiny_base_model.path, None, "float32")
    runs = {}
    for backend in ("lm_eval", "shared_prefix"):
        chosen = [replace(t, backend=backend) for t in tasks]
        results, seconds = run_tasks(model, tokenizer, chosen)
        runs[backend] = [to_outcome(results, t, subject="base", seconds=seconds) for t in chosen]
    for ref, fast in zip(runs["lm_eval"], runs["shared_prefix"], strict=True):
        assert ref.n == fast.n == 20
        for a, b in zip(ref.samples, fast.samples, strict=True):
            assert a.item_id == b.item_id and a.prompt == b.prompt
            assert b.choice_logliks == pytest.approx(a.choice_logliks, abs=1e-4)
            assert a.prediction == b.prediction  # the same choice
            assert a.scores["acc"] == b.scores["acc"]
            assert a.scores["acc_norm"] == b.scores["acc_norm"]
            assert b.scores["p_gold"] == pytest.approx(a.scores["p_gold"], abs=1e-4)
        for metric in ("acc", "acc_norm"):
            assert fast.metrics[metric] == ref.metrics[metric]


def test_evaluate_runs_the_configured_backend(tiny_base_model, tmp_path):
    config = make_config(tmp_path, tasks=["arc_easy"], limit=4, backend="shared_prefix")
    (outcome,) = evaluate(tiny_base_model, None, "base", general_tasks(config))
    assert outcome.n == 4 and all(len(s.choice_logliks) == 4 for s in outcome.samples)
