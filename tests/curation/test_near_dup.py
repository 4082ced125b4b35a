"""Word hashing, the sorted hash index, MinHash LSH and its exact check."""

import subprocess
import sys

import numpy as np
import pytest

from tunegate.curation.checks.base import Batch
from tunegate.curation.checks.near_dup import NearDuplicates, jaccard, lsh_params
from tunegate.curation.shingles import (
    HashIndex,
    hash_words,
    ngram_hash,
    window_hashes,
    windows,
    words,
)
from tunegate.data.records import Record

pytestmark = pytest.mark.unit


def test_words_are_case_and_punctuation_free_and_unicode_aware():
    assert words("Hello, WORLD! it's 3.5") == ["hello", "world", "it", "s", "3", "5"]
    assert words("Ｃａｆé naïve") == ["café", "naïve"]  # NFKC folds full-width letters
    b = hash_words(["Hello world", "hello, world!"])
    assert (b.word_hash[:2] == b.word_hash[2:]).all()


@pytest.mark.integration
def test_hashes_are_deterministic_across_processes():
    code = (
        "from tunegate.curation.shingles import hash_words; "
        "print(hash_words(['determinism matters here']).word_hash.tolist())"
    )
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)}  # fmt: skip
    assert len(runs) == 1
    assert runs.pop().strip() == str(hash_words(["determinism matters here"]).word_hash.tolist())


def test_windows_stay_inside_a_text_and_match_ngram_hash():
    b = hash_words(["a b c d", "e f", ""])
    w = windows(b, 3, short=True)
    assert w.text.tolist() == [0, 0, 1] and w.length.tolist() == [3, 3, 2]
    assert w.hash[1] == ngram_hash(b.word_hash[1:4]) and w.hash[2] == ngram_hash(b.word_hash[4:6])
    assert len(windows(b, 3).hash) == 2  # without `short`, "e f" has no 3-gram
    full = windows(b, 3)  # hashed at chosen starts (contamination's candidates) all the same
    assert (window_hashes(b.word_hash, full.start, 3) == full.hash).all()


def test_hash_index_keeps_the_first_value_across_merges():
    idx = HashIndex()
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, 5000).astype(np.uint64)
    for k in range(0, 5000, 250):
        idx.add(keys[k : k + 250], np.arange(k, k + 250))
    idx.add(keys[:10], np.full(10, -7))  # present already: ignored
    assert len(idx) == 5000 and len(idx._keys) < 8
    assert (idx.get(keys) == np.arange(5000)).all()
    assert idx.get(np.array([1], np.uint64))[0] == -1


def test_lsh_parameters_catch_pairs_at_the_threshold():
    p = lsh_params(0.8, 128)
    assert p.bands * p.rows <= 128 and p.candidate_probability(0.8) >= 0.99
    assert p.candidate_probability(0.85) > 0.999 and p.candidate_probability(0.3) < 0.05


def test_near_duplicates_match_brute_force_jaccard():
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(3000)]
    base = [" ".join(rng.choice(vocab, int(rng.integers(30, 80)))) for _ in range(300)]
    convs = []
    for i, t in enumerate(base):
        convs.append(t)
        if i % 5 == 0:  # planted edits of 1 to 8 words
            w = t.split()
            for _ in range(int(rng.integers(1, 9))):
                w[int(rng.integers(0, len(w)))] = "zz"
            convs.append(" ".join(w))
    records = [Record((("user", "q"), ("assistant", c)), "human", "s", i + 1)
               for i, c in enumerate(convs)]  # fmt: skip
    near = NearDuplicates(threshold=0.8)
    found = {}
    for s in range(0, len(records), 100):  # several batches: index and in-batch paths
        batch = Batch(records[s : s + 100])
        found.update(
            {s + k: v for k, v in near.check_batch(batch, range(len(batch.records))).items()}
        )
    sets = [set(windows(hash_words(["q", c]), 3, short=True).hash.tolist()) for c in convs]
    truth = set()
    kept: list[int] = []
    for i, s in enumerate(sets):
        if any(len(s & sets[k]) / len(s | sets[k]) >= 0.8 for k in kept):
            truth.add(i)
        else:
            kept.append(i)
    assert set(found) == truth and truth
    j = next(iter(found))
    where = int(found[j].duplicate_of.rsplit(":", 1)[1]) - 1
    assert len(sets[j] & sets[where]) / len(sets[j] | sets[where]) >= 0.8


def test_jaccard_of_sorted_sets():
    a, b = np.array([1, 2, 3], np.uint64), np.array([2, 3, 4], np.uint64)
    assert jaccard(a, b) == 0.5 and jaccard(a, a) == 1.0
