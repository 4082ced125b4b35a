"""Contamination: a training row must not contain an eval item, in whole or in long part.

Every eval file (the held-out set, the general-capability suite, any file listed in
`contamination.eval_files`) is indexed once. A training row is rejected (`contamination`,
with the eval item's id) when one of its messages

1. shares a word n-gram (`ngram`, 13 by default, as in GPT-3's and lm-eval's
   decontamination) with an eval text;
2. contains a whole eval text of `min_words` to `ngram - 1` words (too short for rule 1);
3. contains at least `near_threshold` of an eval item's word shingles (near-duplicate:
   a lightly edited copy breaks every 13-gram but keeps most shingles). Candidates come
   from each item's rarest shingles: with 1 - threshold of them missing at most, any row
   above the threshold holds one of the rarest `floor((1 - t) * m) + 1`, so no candidate
   is missed; each candidate is then counted exactly.

Words are lower-cased runs of letters, digits and underscores (punctuation ignored), the
same tokenization as lm-eval's decontamination.

Rules 1 and 2 look only where they can match: a row's `min_words`-word windows are looked
up among the first `min_words` words of every indexed n-gram and short text, and the longer
windows are hashed at those few starts alone (three times faster than hashing every window
of every length).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunegate.config import PipelineConfig
from tunegate.curation.checks.base import Batch, CheckSetup, Finding
from tunegate.curation.shingles import hash_words, ngram_hash, window_hashes, windows, windows_many

log = logging.getLogger(__name__)


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (dict values and list items, recursively)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


@dataclass
class _Table:
    """Sorted hashes with the eval item of each, for vectorised lookups.

    A byte map indexed by the top bits of a hash answers "certainly absent" for almost
    every training n-gram in one gather; only the rest are binary-searched.
    """

    hashes: np.ndarray
    items: np.ndarray
    present: np.ndarray  # bool per top-bits bucket
    shift: np.uint64

    @classmethod
    def build(cls, hashes: np.ndarray, items: np.ndarray) -> _Table:
        order = np.argsort(hashes, kind="stable")
        bits = int(np.clip(np.ceil(np.log2(max(len(hashes), 1) * 8)), 12, 24))
        present = np.zeros(1 << bits, dtype=bool)
        shift = np.uint64(64 - bits)
        present[hashes >> shift] = True
        return cls(hashes[order], items[order], present, shift)

    def candidates(self, hashes: np.ndarray) -> np.ndarray:
        """Indices of the hashes that may be in the table (the rest certainly are not)."""
        return np.flatnonzero(self.present[hashes >> self.shift])

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Item of each hash (the first item holding it), -1 when no item does."""
        out = np.full(len(hashes), -1, np.int64)
        maybe = self.candidates(hashes)
        if not len(self.hashes) or not len(maybe):
            return out
        q = hashes[maybe]
        pos = np.searchsorted(self.hashes, q)
        pos[pos == len(self.hashes)] = 0
        out[maybe] = np.where(self.hashes[pos] == q, self.items[pos], -1)
        return out

    def pairs(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (query index, item) with equal hashes (a hash may belong to many items)."""
        maybe = self.candidates(hashes)
        query, item = self._pairs(hashes[maybe])
        return maybe[query], item

    def _pairs(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.searchsorted(self.hashes, hashes, side="left")
        hi = np.searchsorted(self.hashes, hashes, side="right")
        n = hi - lo
        query = np.repeat(np.arange(len(hashes)), n)
        pos = np.repeat(lo, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        return query, self.items[pos].astype(np.int64)


@dataclass
class EvalIndex:
    """Every eval item's n-grams, short texts and shingles, ready for batch lookups."""

    files: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    ngram: int = 13
    min_words: int = 8
    shingle_size: int = 3
    near_threshold: float = 0.7
    grams: _Table | None = None
    short: dict[int, _Table] = field(default_factory=dict)
    # The first `prefix_words` words of every indexed n-gram and short text: a training window
    # can only match an eval text where its first words match one of these.
    prefixes: _Table | None = None
    anchors: _Table | None = None
    item_shingles: list[np.ndarray] = field(default_factory=list)
    skipped_rows: int = 0

    @classmethod
    def from_files(
        cls,
        paths: Sequence[Path],
        *,
        ngram: int = 13,
        min_words: int = 8,
        shingle_size: int = 3,
        near_threshold: float = 0.7,
        fields: Sequence[str] | None = None,
        id_field: str = "id",
        names: Sequence[str] | None = None,
    ) -> EvalIndex:
        """Read eval rows from files or directories (missing ones are listed, not fatal)."""
        from tunegate.data.ingest import read_rows, source_files

        index = cls(ngram=ngram, min_words=min_words, shingle_size=shingle_size,
                    near_threshold=near_threshold)  # fmt: skip
        texts: list[str] = []
        owners: list[int] = []
        seen: set[Path] = set()
        for k, path in enumerate(paths):
            name = names[k] if names else str(path)
            if not path.exists():
                index.missing.append(name)
                continue
            for file in source_files(path):
                if file.resolve() in seen:
                    continue
                seen.add(file.resolve())
                label = name if file == path else f"{name.rstrip('/')}/{file.relative_to(path)}"
                index.files.append(label)
                for raw in read_rows(file):
                    if raw.data is None:
                        index.skipped_rows += 1
                        continue
                    item = raw.data.get(id_field)
                    item_id = f"{label}#{item}" if item is not None else f"{label}:{raw.row}"
                    wanted = raw.data if fields is None else {f: raw.data.get(f) for f in fields}
                    strings = [s for k2, v in wanted.items() if k2 != id_field for s in _strings(v)]
                    if not strings:
                        index.skipped_rows += 1
                        continue
                    texts.extend(strings)
                    owners.extend([len(index.item_ids)] * len(strings))
                    index.item_ids.append(item_id)
        index._build(texts, np.asarray(owners, dtype=np.int64))
        return index

    def _build(self, texts: list[str], owner: np.ndarray) -> None:
        wb = hash_words(texts)
        counts = np.diff(wb.text_start)
        w = windows(wb, self.ngram)
        self.grams = _Table.build(w.hash, owner[w.text])
        starts = [w.start]
        for n in range(self.min_words, self.ngram):
            whole = np.flatnonzero(counts == n)
            if len(whole):
                hashes = np.array([ngram_hash(wb.word_hash[wb.text_start[t]: wb.text_start[t + 1]])
                                   for t in whole], dtype=np.uint64)  # fmt: skip
                self.short[n] = _Table.build(hashes, owner[whole])
                starts.append(wb.text_start[whole])
        first = np.concatenate(starts)
        self.prefixes = _Table.build(window_hashes(wb.word_hash, first, self.prefix_words),
                                     np.zeros(len(first), np.int64))  # fmt: skip
        # Near-duplicate containment: each item's shingle set and its rarest shingles. Texts
        # shorter than a shingle (labels, choices) are left out: rules 1-2 cover them.
        sh = windows(wb, self.shingle_size)
        n_items = len(self.item_ids)
        pairs = np.unique(np.stack([owner[sh.text], sh.hash.view(np.int64)], axis=1), axis=0)
        items, hashes = pairs[:, 0], pairs[:, 1].view(np.uint64)
        starts = np.searchsorted(items, np.arange(n_items + 1))
        _, inverse, df = np.unique(hashes, return_inverse=True, return_counts=True)
        rarity = df[inverse]
        anchor_h, anchor_i = [], []
        self.item_shingles = []
        for i in range(n_items):
            lo, hi = starts[i], starts[i + 1]
            own = hashes[lo:hi]  # sorted: np.unique sorted the (item, hash) pairs
            self.item_shingles.append(own)
            if hi - lo < max(1, self.min_words - self.shingle_size + 1):
                continue
            k = int(np.floor((1 - self.near_threshold) * (hi - lo))) + 1
            pick = np.lexsort((own, rarity[lo:hi]))[:k]
            anchor_h.append(own[pick])
            anchor_i.append(np.full(len(pick), i, np.int64))
        if anchor_h:
            self.anchors = _Table.build(np.concatenate(anchor_h), np.concatenate(anchor_i))
        log.info("eval index: %d items from %d files, %d %d-grams", n_items, len(self.files),
                 len(self.grams.hashes), self.ngram)  # fmt: skip

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def prefix_words(self) -> int:
        return min(self.min_words, self.ngram)


class Contamination:
    """Rejects rows that overlap an eval item (see the module docstring for the rules)."""

    reason = "contamination"
    meaning = "overlaps an eval item (13-gram or near-duplicate)"
    stage = "contamination"
    order = 40
    needs_tokenizer = False

    def __init__(self, index: EvalIndex):
        self.index = index

    @staticmethod
    def enabled(config: PipelineConfig) -> bool:
        return config.contamination.enabled

    @classmethod
    def from_config(cls, config: PipelineConfig, setup: CheckSetup) -> Contamination:
        return cls(eval_index(config))

    def check_batch(self, batch: Batch, rows: Sequence[int]) -> dict[int, Finding]:
        idx = self.index
        if not len(idx) or not rows:
            return {}
        alive = np.zeros(len(batch.records), dtype=bool)
        alive[np.asarray(rows, dtype=np.int64)] = True
        wb = batch.words
        findings: dict[int, Finding] = {}
        # 1. candidate starts: windows whose first words begin some indexed eval text
        assert idx.prefixes is not None
        head = windows_many(wb, [idx.prefix_words])[idx.prefix_words]
        hit_head = (idx.prefixes.lookup(head.hash) >= 0) & alive[batch.message_record[head.text]]
        maybe = head.start[hit_head]
        maybe_text = wb.text_of[maybe]
        # 2. the n-gram, then the whole short texts (longest first), at those starts only
        for n in sorted([idx.ngram, *idx.short], reverse=True):
            table = idx.grams if n == idx.ngram else idx.short[n]
            if table is None:
                continue
            fits = maybe + n <= wb.text_start[maybe_text + 1]
            start, text_of = maybe[fits], maybe_text[fits]
            record = batch.message_record[text_of]
            item = table.lookup(window_hashes(wb.word_hash, start, n))
            for hit in np.flatnonzero(item >= 0):
                r = int(record[hit])
                if r in findings:
                    continue
                text = wb.text_words(
                    int(text_of[hit]), int(start[hit] - wb.text_start[text_of[hit]]), n
                )
                eval_id = idx.item_ids[item[hit]]
                what = (f"shares the {n}-gram '{text}'" if n == idx.ngram
                        else f"contains the whole {n}-word eval text '{text}'")  # fmt: skip
                findings[r] = Finding(f"{what} with eval item {eval_id}", eval_item=eval_id)
        if idx.anchors is not None:
            findings.update(self._near(batch, alive, findings))
        return findings

    def _near(
        self, batch: Batch, alive: np.ndarray, found: dict[int, Finding]
    ) -> dict[int, Finding]:
        """Rows holding at least near_threshold of an item's shingles."""
        idx = self.index
        assert idx.anchors is not None
        sh = windows(batch.words, idx.shingle_size)
        record = batch.message_record[sh.text]  # ascending: windows come in text order
        bounds = np.searchsorted(record, np.arange(len(batch.records) + 1))
        query, item = idx.anchors.pairs(sh.hash)
        rec = record[query]
        keep = alive[rec]
        candidates = np.unique(np.stack([rec[keep], item[keep]], axis=1), axis=0)
        out: dict[int, Finding] = {}
        own_cache: dict[int, np.ndarray] = {}
        for r, i in candidates.tolist():
            if r in found or r in out:
                continue
            if r not in own_cache:
                own_cache[r] = np.unique(sh.hash[bounds[r] : bounds[r + 1]])
            share = float(np.isin(idx.item_shingles[i], own_cache[r], assume_unique=True).mean())
            if share >= idx.near_threshold:
                eval_id = idx.item_ids[i]
                out[r] = Finding(
                    f"contains {share:.0%} of the word {idx.shingle_size}-shingles of eval item "
                    f"{eval_id} (near-duplicate, >= {idx.near_threshold:.0%})",
                    eval_item=eval_id,
                )  # fmt: skip
        return out


def eval_index(config: PipelineConfig) -> EvalIndex:
    """Every eval set to decontaminate against: the held-out set plus `eval_files`."""
    c = config.contamination
    names = list(dict.fromkeys([config.eval.heldout_path, *c.eval_files]))
    return EvalIndex.from_files(
        [config.resolve(p) for p in names], ngram=c.ngram, min_words=c.min_words,
        shingle_size=c.shingle_size, near_threshold=c.near_threshold, fields=c.fields,
        id_field=c.id_field, names=names,
    )  # fmt: skip
