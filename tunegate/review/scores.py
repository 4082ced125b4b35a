"""Automatic review of synthetic rows: scores, flags, and an outcome per row.

Each `origin: synthetic` row that passed the row checks is scored on its answer (the
assistant turns) and its prompt (system and user turns):

| flag | score(s) | set when |
| --- | --- | --- |
| `refusal` | `refusal_hits` | the answer matches a refusal pattern ("I'm sorry, but") |
| `boilerplate` | `boilerplate_hits` | the answer holds AI boilerplate ("as an AI language model") |
| `repetition` | `dup_line_frac`, `top_{n}gram_frac`, `dup_{n}gram_frac` | a Gopher rule fails |
| `empty_answer` | `answer_chars` | the answer is blank or a placeholder such as "N/A" |
| `too_short` | `answer_chars` | the answer has fewer than `min_answer_chars` characters |
| `length_ratio` | `length_ratio` | answer words / prompt words outside the configured range |
| `repeated_answer` | `answer_repeats` | the same long answer in several synthetic rows |
| `non_alpha` | `alpha_word_frac` | too few answer words hold a letter (Gopher) |
| `near_copy` | `near_copy` | word 3-gram Jaccard with a human row reaches the threshold |
| `perplexity` | `perplexity` | answer perplexity under the base model is too high (optional) |

`synthetic.reject_on` flags reject (`synthetic_rejected`), `synthetic.review_on` flags send
the row to a human; a row with no such flag is accepted. Pure functions: no lineage writes.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tunegate.config import SyntheticConfig
from tunegate.curation.checks.near_dup import MinHasher, band_keys, jaccard, lsh_params
from tunegate.data.records import Record, normalize_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ACCEPTED, REJECTED, REVIEW = "accepted", "rejected", "review"
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


@dataclass(frozen=True)
class SyntheticScore:
    """One synthetic row's scores, the flags they raise and the outcome."""

    record: Record
    scores: dict[str, float]
    flags: tuple[str, ...]
    outcome: str  # accepted | rejected | review
    detail: str


def answer_text(record: Record) -> str:
    return "\n\n".join(c for r, c in record.messages if r == "assistant")


def prompt_text(record: Record) -> str:
    return "\n\n".join(c for r, c in record.messages if r != "assistant")


def phrase_hits(text: str, phrases: Sequence[str]) -> list[str]:
    """Phrases found in text, case- and curly-quote-insensitively."""
    folded = text.translate(_QUOTES).casefold()
    return [p for p in phrases if p.casefold() in folded]


def pattern_hits(text: str, patterns: Sequence[str]) -> list[str]:
    """The matched text of each regular expression found (case-insensitive)."""
    folded = text.translate(_QUOTES)
    found = (re.search(p, folded, re.IGNORECASE) for p in patterns)
    return [m.group(0) for m in found if m]


# -- repetition (Gopher rules, Rae et al. 2021, as in datatrove's GopherRepetitionFilter) --------


def _ngrams(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def top_ngram_char_fraction(text: str, words: list[str], n: int) -> float:
    """Characters of the most frequent n-gram times its count, over all characters."""
    grams = Counter(_ngrams(words, n))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count / max(len(text), 1) if count > 1 else 0.0


def duplicate_ngram_char_fraction(text: str, words: list[str], n: int) -> float:
    """Characters inside n-grams seen before (non-overlapping), over all characters."""
    seen: set[str] = set()
    repeated, i = 0, 0
    while i < len(words) - n + 1:
        gram = "".join(words[i : i + n])
        if gram in seen:
            repeated += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated / max(len(text), 1)


def repetition_scores(text: str, config: SyntheticConfig) -> dict[str, float]:
    words = text.split()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    scores = {"dup_line_frac": (len(lines) - len(set(lines))) / len(lines) if lines else 0.0}
    for n in config.max_top_ngram_char_fraction:
        scores[f"top_{n}gram_frac"] = top_ngram_char_fraction(text, words, n)
    for n in config.max_duplicate_ngram_char_fraction:
        scores[f"dup_{n}gram_frac"] = duplicate_ngram_char_fraction(text, words, n)
    return scores


def repetition_failures(
    scores: dict[str, float], n_words: int, config: SyntheticConfig
) -> list[str]:
    """The repetition rules a text breaks (none below `repetition_min_words`: too noisy)."""
    if n_words < config.repetition_min_words:
        return []
    limits = {"dup_line_frac": config.max_duplicate_line_fraction}
    limits.update({f"top_{n}gram_frac": v for n, v in config.max_top_ngram_char_fraction.items()})
    limits.update(
        {f"dup_{n}gram_frac": v for n, v in config.max_duplicate_ngram_char_fraction.items()}
    )
    return [f"{k} {scores[k]:.2f} > {v}" for k, v in limits.items() if scores[k] > v]


# -- near copies of human rows -------------------------------------------------------------------


def shingles(text: str, n: int = 3) -> set[str]:
    words = normalize_text(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return set(_ngrams(words, n))


def _record_text(record: Record) -> str:
    return "\n".join(c for _, c in record.messages)


def shingle_hashes(s: set[str]) -> np.ndarray:
    """A shingle set as sorted 64-bit hashes: the form near-dup's MinHash and Jaccard take."""
    hashes = [int.from_bytes(hashlib.blake2b(x.encode(), digest_size=8).digest(), "little")
              for x in s]  # fmt: skip
    return np.unique(np.array(hashes, dtype=np.uint64))


class HumanIndex:
    """Human rows in a MinHash LSH; candidates are confirmed with exact Jaccard.

    The MinHash, LSH bands and exact Jaccard are near-dup's (`tunegate.curation.checks.near_dup`);
    only the shingles differ: word 3-grams of the whole conversation, as the flag documents.
    """

    def __init__(self, human: Sequence[Record], threshold: float, num_perm: int = 128):
        self.hasher = MinHasher(num_perm)
        # A lower LSH threshold than the flag's: LSH misses some pairs near its own threshold.
        self.params = lsh_params(min(max(threshold - 0.2, 0.05), 0.95), num_perm)
        self.sets: list[tuple[np.ndarray, Record]] = []
        for record in human:
            hashes = shingle_hashes(shingles(_record_text(record)))
            if len(hashes):
                self.sets.append((hashes, record))
        self.buckets: dict[int, list[int]] = defaultdict(list)  # band key -> rows in `sets`
        keys = self._band_keys([h for h, _ in self.sets])
        for k, row in enumerate(keys.tolist()):
            for key in row:
                self.buckets[key].append(k)

    def _band_keys(self, sets: list[np.ndarray]) -> np.ndarray:
        starts = np.concatenate(([0], np.cumsum([len(h) for h in sets]))).astype(np.int64)
        values = np.concatenate(sets) if sets else np.zeros(0, dtype=np.uint64)
        return band_keys(self.hasher.signatures(values, starts), self.params)

    def nearest(self, record: Record) -> tuple[float, Record | None]:
        """Highest Jaccard with a human row and that row (0, None when nothing is close)."""
        hashes = shingle_hashes(shingles(_record_text(record)))
        if not len(hashes) or not self.sets:
            return 0.0, None
        candidates = {k for key in self._band_keys([hashes])[0].tolist()
                      for k in self.buckets.get(key, ())}  # fmt: skip
        best: tuple[float, Record | None] = (0.0, None)
        for k in sorted(candidates):
            other, human = self.sets[k]
            sim = jaccard(hashes, other)
            if sim > best[0]:
                best = (sim, human)
        return best


# -- perplexity under the base model ------------------------------------------------------------


def answer_perplexities(
    records: Sequence[Record],
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
) -> list[float]:
    """Perplexity of each row's trained (assistant) tokens given its prompt; CPU, batched.

    The labels are the trainer's own assistant mask, so this is the loss the row would start
    training at. Rows the trainer cannot tokenize get NaN (the template gate reports those).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from tunegate.chat import ChatError, end_of_turn, load_tokenizer, tokenize_chat

    out = [math.nan] * len(records)
    try:  # a model without a usable chat format is the template gate's to report
        tokenizer = tokenizer or load_tokenizer(model_dir)
        end = end_of_turn(tokenizer)
    except ChatError:
        return out
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows: list[tuple[int, list[int], list[int]]] = []
    for k, record in enumerate(records):
        try:
            chat = tokenize_chat(tokenizer, record.as_messages(), end)
        except Exception:  # a template failure is the template gate's to report
            continue
        rows.append((k, chat.input_ids[:max_length], chat.assistant_mask[:max_length]))
    rows.sort(key=lambda r: len(r[1]))  # similar lengths per batch: little padding
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(ids) for _, ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for b, (_, row_ids, mask) in enumerate(batch):
                ids[b, : len(row_ids)] = torch.tensor(row_ids)
                attention[b, : len(row_ids)] = 1
                labels[b, : len(row_ids)] = torch.tensor(
                    [t if m else -100 for t, m in zip(row_ids, mask, strict=True)]
                )
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
            )
            counts = (target != -100).sum(dim=1)
            for b, (k, _, _) in enumerate(batch):
                if counts[b] > 0:
                    out[k] = math.exp(float(nll[b].sum() / counts[b]))
    return out


# -- scoring and triage -------------------------------------------------------------------------


def score_row(
    record: Record, config: SyntheticConfig, nearest: tuple[float, Record | None] = (0.0, None)
) -> tuple[dict[str, float], dict[str, str]]:
    """Scores of one row and the flags they raise, each with its human-readable reason."""
    answer, prompt = answer_text(record), prompt_text(record)
    answer_words, prompt_words = len(answer.split()), len(prompt.split())
    refusals = pattern_hits(answer, config.refusal_patterns)
    boilerplate = phrase_hits(answer, config.boilerplate_phrases)
    ratio = answer_words / max(prompt_words, 1)
    words = answer.split()
    alpha = sum(any(ch.isalpha() for ch in w) for w in words) / max(len(words), 1)
    scores = {
        "answer_chars": float(len(answer.strip())),
        "answer_words": float(answer_words),
        "prompt_words": float(prompt_words),
        "length_ratio": ratio,
        "refusal_hits": float(len(refusals)),
        "boilerplate_hits": float(len(boilerplate)),
        "alpha_word_frac": alpha,
        "near_copy": nearest[0],
        **repetition_scores(answer, config),
    }
    flags: dict[str, str] = {}
    if refusals:
        flags["refusal"] = "refusal: " + ", ".join(repr(p) for p in refusals)
    if boilerplate:
        flags["boilerplate"] = "boilerplate: " + ", ".join(repr(p) for p in boilerplate)
    repeated = repetition_failures(scores, answer_words, config)
    if repeated:
        flags["repetition"] = "repetition: " + "; ".join(repeated)
    placeholders = {t.casefold() for t in config.placeholder_answers}
    if not answer.strip() or answer.strip().casefold() in placeholders:
        flags["empty_answer"] = f"empty or placeholder answer {answer.strip()[:40]!r}"
    elif len("".join(words)) < config.min_answer_chars:
        flags["too_short"] = (
            f"answer {answer.strip()!r} shorter than {config.min_answer_chars} chars"
        )
    if answer_words >= config.repetition_min_words and alpha < config.min_alpha_word_fraction:
        flags["non_alpha"] = (
            f"only {alpha:.0%} of answer words hold a letter < {config.min_alpha_word_fraction:.0%}"
        )
    low, high = config.length_ratio_range
    if not low <= ratio <= high:
        flags["length_ratio"] = f"answer/prompt words {ratio:.3g} outside [{low}, {high}]"
    if nearest[1] is not None and nearest[0] >= config.near_copy_threshold:
        human = nearest[1]
        flags["near_copy"] = (
            f"near copy (Jaccard {nearest[0]:.2f}) of human row {human.source}:{human.source_row}"
        )
    return scores, flags


def triage(flags: Sequence[str], config: SyntheticConfig) -> str:
    """Reject flags win over review flags; no flag that matters means accepted."""
    if any(f in config.reject_on for f in flags):
        return REJECTED
    if any(f in config.review_on for f in flags):
        return REVIEW
    return ACCEPTED


def score_synthetic(
    synthetic: Sequence[Record],
    human: Sequence[Record],
    config: SyntheticConfig,
    model_dir: Path | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[SyntheticScore]:
    """Score synthetic rows against the human rows (and the base model when configured)."""
    index = HumanIndex(human, config.near_copy_threshold) if human else None
    answers = [normalize_text(answer_text(r)) for r in synthetic]
    repeats = Counter(a for a in answers if len(a.split()) >= config.repeated_answer_min_words)
    ppl = [math.nan] * len(synthetic)
    if config.perplexity and synthetic:
        if model_dir is None:
            raise ValueError("synthetic.perplexity needs the base model directory")
        ppl = answer_perplexities(synthetic, model_dir, tokenizer, config.perplexity_batch_size,
                                  config.perplexity_max_tokens)  # fmt: skip
    out = []
    for record, answer, perplexity in zip(synthetic, answers, ppl, strict=True):
        nearest = index.nearest(record) if index else (0.0, None)
        scores, flags = score_row(record, config, nearest)
        scores["answer_repeats"] = float(repeats.get(answer, 1))
        if repeats.get(answer, 1) > 1:
            flags["repeated_answer"] = f"the same answer in {repeats[answer]} synthetic rows"
        if config.perplexity:
            scores["perplexity"] = perplexity
            if perplexity > config.max_perplexity:  # NaN compares False: not flagged
                flags["perplexity"] = f"perplexity {perplexity:.1f} > {config.max_perplexity}"
        names = tuple(flags)
        out.append(SyntheticScore(record, scores, names, triage(names, config),
                                  "; ".join(flags.values())))  # fmt: skip
    return out
