"""Automatic review of synthetic rows: each flag on its own, then real public data."""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest import SHARED_DATA

from tunegate.config import SyntheticConfig
from tunegate.data.records import Record
from tunegate.review.scores import (
    ACCEPTED,
    REJECTED,
    REVIEW,
    answer_perplexities,
    score_synthetic,
    triage,
)

pytestmark = pytest.mark.unit

CFG = SyntheticConfig()
ALPACA_EVAL_NULL = SHARED_DATA / "tatsu-lab__alpaca_eval/results/NullModel/model_outputs.json"
SELF_INSTRUCT = SHARED_DATA / "yizhongw__self-instruct"
DAVINCI = SELF_INSTRUCT / "human_eval/predictions/davinci_predictions.jsonl"
SEEDS = SELF_INSTRUCT / "data/seed_tasks.jsonl"


def chat(user: str, answer: str, origin: str = "synthetic", row: int = 1) -> Record:
    return Record((("user", user), ("assistant", answer)), origin, "s.jsonl", row)


def scored(answer: str, user: str = "Summarize the shipping policy for international orders.",
           human: list[Record] | None = None, config: SyntheticConfig = CFG):  # fmt: skip
    return score_synthetic([chat(user, answer)], human or [], config)[0]


CLEAN = "International orders ship within five business days and customs fees are paid on delivery."


def test_a_clean_answer_is_accepted():
    s = scored(CLEAN)
    assert (s.outcome, s.flags) == (ACCEPTED, ())


@pytest.mark.parametrize("answer", [
    "I'm sorry, but I cannot share our internal shipping policy.",
    "As an AI language model, I cannot access order systems.",
    "I am unable to help with that request.",
])  # fmt: skip
def test_refusals_are_rejected(answer):
    s = scored(answer)
    assert "refusal" in s.flags and s.outcome == REJECTED


def test_i_cant_help_but_is_not_a_refusal():
    assert (
        "refusal" not in scored("I can't help but admire how fast international orders ship.").flags
    )


def test_ai_boilerplate_goes_to_review():
    s = scored(CLEAN + " I hope this helps! Let me know if you have any other questions.")
    assert s.flags == ("boilerplate",) and s.outcome == REVIEW


def test_repetition_loops_are_rejected_gopher_rules():
    loop = "Orders ship in five days. " * 12
    s = scored(loop)
    assert "repetition" in s.flags and s.outcome == REJECTED
    assert s.scores["dup_5gram_frac"] > 0.15 and s.scores["top_2gram_frac"] > 0.2
    # the same loop below repetition_min_words is not judged (too short to be reliable)
    assert "repetition" not in scored("Orders ship. " * 5).flags


STEPS = ["Open the orders page from the main menu.", "Find the parcel you want to send abroad.",
         "Check the customs form and the declared value.", "Pick a carrier that delivers there.",
         "Print the label and attach it to the box.",
         "Book a pickup or drop the parcel off."]  # fmt: skip
STOCK = ["Blue mugs", "Red scarves", "Green kettles", "Oak shelves", "Wool socks", "Glass jars",
         "Steel pans", "Linen towels", "Cotton shirts", "Paper lamps", "Clay pots",
         "Silk ties"]  # fmt: skip
REFUND = "Your refund was approved on Monday and the money is on its way back to your card."


@pytest.mark.parametrize(("answer", "rule"), [
    ("\n".join(f"{step}\nDone." for step in STEPS), r"dup_line_frac"),  # a repeated line
    (" ".join(f"{item} are in stock." for item in STOCK), r"top_\dgram_frac"),  # one n-gram
    (f"{REFUND} Banks usually need three to five business days to show it on the statement. "
     f"If you paid with a gift card, the balance is back at once and you can spend it right "
     f"away. {REFUND}", r"dup_\d+gram_frac"),  # a repeated passage
])  # fmt: skip
def test_each_gopher_rule_rejects_on_its_own(answer, rule):
    s = scored(answer)
    assert s.flags == ("repetition",) and s.outcome == REJECTED
    broken = s.detail.removeprefix("repetition: ").split("; ")
    assert all(re.fullmatch(rf"{rule} [\d.]+ > [\d.]+", b) for b in broken), broken


@pytest.mark.parametrize("answer", ["N/A", "<nooutput>", "..."])
def test_placeholder_answers_are_rejected(answer):
    s = scored(answer)
    assert s.flags[0] == "empty_answer" and s.outcome == REJECTED


def test_trivially_short_answers_go_to_review():
    s = scored("Y")
    assert "too_short" in s.flags and s.outcome == REVIEW
    assert "too_short" not in scored("Yes").flags


def test_answer_prompt_length_ratio():
    long_prompt = " ".join(["word"] * 150) + " Classify the sentiment."
    s = scored("Positive", user=long_prompt)
    assert s.flags == ("length_ratio",) and s.scores["length_ratio"] == pytest.approx(1 / 153)
    narrow = SyntheticConfig(length_ratio_range=(0.5, 2.0))
    assert "length_ratio" in scored(CLEAN, user="Policy?", config=narrow).flags


def test_the_same_long_answer_for_different_prompts_is_flagged():
    rows = [chat(f"Question {i} about shipping?", CLEAN, row=i) for i in range(3)]
    rows.append(
        chat("Another one?", "A different, equally long answer about customs fees here.", row=9)
    )
    out = score_synthetic(rows, [], CFG)
    assert [("repeated_answer" in s.flags) for s in out] == [True, True, True, False]
    assert out[0].scores["answer_repeats"] == 3 and out[0].outcome == REVIEW
    labels = [chat(f"Ticket {i}: where is my parcel?", "Shipping delay.", row=i) for i in range(3)]
    assert all(s.flags == () for s in score_synthetic(labels, [], CFG))  # short labels repeat


def test_symbol_soup_is_flagged_non_alpha():
    soup = " ".join(["}", "{", "verify", "}", "];", "}", "=>", "})"] * 8)
    s = scored(soup)
    assert "non_alpha" in s.flags and s.scores["alpha_word_frac"] < 0.6
    assert scored("42", user="How many items are in order A12345?").flags == ()  # short: not judged


def test_near_copies_of_human_rows_are_rejected():
    user = "Summarize the shipping policy for international orders."
    human = [
        chat(user, CLEAN, origin="human", row=7),
        chat("Unrelated?", "Something else entirely.", "human", 8),
    ]
    copy = scored(CLEAN + " Thanks!", user=user, human=human)
    assert "near_copy" in copy.flags and copy.outcome == REJECTED
    assert "s.jsonl:7" in copy.detail and copy.scores["near_copy"] == pytest.approx(0.95)
    # one word changed mid-answer: Jaccard 0.73 on word 3-grams, below the 0.8 default
    edited = scored(CLEAN.replace("five", "5"), user=user, human=human)
    assert "near_copy" not in edited.flags and edited.scores["near_copy"] == pytest.approx(16 / 22)
    other = scored("Customs fees are charged when the parcel arrives; expect a week.", user="Fees?",
                   human=human)  # fmt: skip
    assert "near_copy" not in other.flags and other.scores["near_copy"] < 0.8


def test_reject_flags_win_and_the_config_decides():
    assert triage(("boilerplate", "refusal"), CFG) == REJECTED
    assert triage(("boilerplate",), CFG) == REVIEW
    lenient = SyntheticConfig(reject_on=[], review_on=["refusal"])
    assert triage(("refusal",), lenient) == REVIEW
    assert triage(("boilerplate",), lenient) == ACCEPTED


@pytest.mark.integration
def test_perplexity_flags_token_garbage(embedded_model_dir):
    """Real SmolLM2 on CPU, two short rows: garbage scores far above a fluent answer."""
    garbage = chat(
        "What is the capital of France?", "} } verify }:param shrimp sett(query176 }summer }"
    )
    fluent = chat("What is the capital of France?", "The capital of France is Paris.")
    ppl = answer_perplexities([garbage, fluent], embedded_model_dir, batch_size=2)
    assert ppl[0] > 200 > 20 > ppl[1] > 1
    config = SyntheticConfig(perplexity=True, max_perplexity=200)
    out = score_synthetic([garbage, fluent], [], config, embedded_model_dir)
    assert "perplexity" in out[0].flags and out[0].outcome == REVIEW
    assert out[1].flags == () and math.isclose(out[1].scores["perplexity"], ppl[1], rel_tol=1e-3)


# -- real public data (../shared/data) ------------------------------------------------------------

needs_data = pytest.mark.skipif(not SELF_INSTRUCT.is_dir(), reason="../shared/data is not here")


def prompt(instruction: str, extra: str) -> str:
    return instruction.strip() + (f"\n\n{extra}" if extra.strip() else "")


@needs_data
def test_alpaca_eval_null_model_outputs_are_all_flagged():
    rows = json.loads(ALPACA_EVAL_NULL.read_text())
    records = [chat(r["instruction"], r["output"], row=i) for i, r in enumerate(rows, 1)]
    out = score_synthetic(records, [], CFG)
    assert len(out) == 805 and all(s.outcome != ACCEPTED for s in out)
    assert all({"repeated_answer", "non_alpha"} <= set(s.flags) for s in out)


@needs_data
def test_self_instruct_davinci_repetition_loops_are_rejected():
    rows = [json.loads(line) for line in DAVINCI.read_text().splitlines()]
    records = [chat(prompt(r["instruction"], r["input"]), r["response"], row=i)
               for i, r in enumerate(rows, 1)]  # fmt: skip
    out = score_synthetic(records, [], CFG)
    flagged = [s for s in out if s.outcome != ACCEPTED]
    assert len(flagged) >= 0.95 * len(out)  # 249 of 252: repetition loops
    assert sum("repetition" in s.flags for s in out) >= 0.95 * len(out)


@needs_data
def test_clean_self_instruct_seed_tasks_mostly_pass():
    rows = [json.loads(line) for line in SEEDS.read_text().splitlines()]
    records = [chat(prompt(r["instruction"], r["instances"][0]["input"]),
                    r["instances"][0]["output"], row=i) for i, r in enumerate(rows, 1)]  # fmt: skip
    out = score_synthetic(records, [], CFG)
    accepted = sum(s.outcome == ACCEPTED for s in out)
    rejected = sum(s.outcome == REJECTED for s in out)
    assert accepted >= 0.9 * len(out)  # 162 of 175
    assert rejected <= 0.05 * len(out)
