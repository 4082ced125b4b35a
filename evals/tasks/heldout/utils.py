"""Scoring of the held-out task (lm-eval `process_results`, loaded via `!function`).

Kept free of tunegate imports: lm-eval loads this file by path, outside the package.
Parsing is strict on purpose: the task asks for JSON only, so a reply wrapped in prose
or a Markdown fence is unparseable and scores 0.
"""

from __future__ import annotations

import json

FIELDS = ("intent", "priority", "order_id")


def parse_reply(text: str) -> dict | None:
    """The reply as a JSON object, or None when it is not one."""
    try:
        obj = json.loads(text.strip())
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def score_reply(reply: str, target: str) -> dict[str, float]:
    """field_accuracy, json_valid and exact_match of one reply against the target JSON."""
    gold = json.loads(target)
    pred = parse_reply(reply)
    if pred is None:
        return {"field_accuracy": 0.0, "json_valid": 0.0, "exact_match": 0.0}
    right = [field in pred and pred[field] == gold[field] for field in FIELDS]
    return {
        "field_accuracy": sum(right) / len(FIELDS),
        "json_valid": float(set(pred) == set(FIELDS)),
        "exact_match": float(all(right)),
    }


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval hook: `results` holds the one generated reply for `doc`."""
    return score_reply(results[0], doc["target"])


def process_loglikelihood(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """lm-eval hook of `tunegate_heldout_loglik`: the reference answer's log-likelihood."""
    loglik, _is_greedy = results[0]
    return {"ref_loglik": float(loglik)}
