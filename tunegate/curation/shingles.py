"""Words, n-grams and shingles as 64-bit hashes, computed for a whole batch at once.

Near-duplicate and contamination checks compare sets of word n-grams. Hashing words one
Python call at a time costs more than everything else in curation together, so a batch
of texts is tokenized and hashed with a handful of numpy passes over its UTF-8 bytes:

1. normalise each text (NFKC and case-fold when not ASCII; ASCII only needs lower case)
   and turn every non-word character into a space (a word is a run of \\w characters);
2. join the texts with a separator byte, find word boundaries in the byte array;
3. hash each word (bytes times per-position random constants, summed, then mixed);
4. hash each n-word window the same way from its word hashes, never across two texts.

Every hash here is deterministic (fixed constants, no Python `hash()`), so a run gives
the same verdicts on any machine. `HashIndex` stores uint64 keys in sorted numpy arrays:
12-16 bytes per key instead of ~100 for a Python dict entry.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_SEP = 1  # byte that separates two texts in a batch buffer
_MASK64 = (1 << 64) - 1


def _ascii_table() -> bytes:
    """Translation table: ASCII word characters stay, other ASCII bytes become spaces."""
    keep = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
    table = bytearray(range(256))
    for b in range(128):
        if b not in keep and b != _SEP:
            table[b] = 0x20
    return bytes(table)


_TABLE = _ascii_table()
_NON_WORD = re.compile(r"[\W]+")
_CONST = np.random.default_rng(20241122).integers(1, 2**63, size=(2, 256), dtype=np.uint64)
_BYTE_COEF = _CONST[0] | np.uint64(1)  # per position in a word (mod 64)
_WORD_COEF = _CONST[1, :64] | np.uint64(1)  # per position in an n-gram (n <= 64)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads every input bit over all 64 output bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def normalize_words(text: str) -> str:
    """Lower-cased text with non-word characters as spaces (NFKC first when not ASCII)."""
    if text.isascii():
        return text
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold())


def words(text: str) -> list[str]:
    """The words of a text as the hashing below sees them (for details and tests)."""
    return normalize_words(text).encode().lower().translate(_TABLE).decode().split()


@dataclass(frozen=True)
class WordBatch:
    """The words of a batch of texts: one hash per word, and which text it belongs to.

    `text_of[i]` is the index of the text word i came from; texts are contiguous, so the
    words of text t are `word_hash[text_start[t]:text_start[t + 1]]`.
    """

    word_hash: np.ndarray  # uint64 per word
    text_of: np.ndarray  # int64 per word
    text_start: np.ndarray  # int64 per text, plus the total at the end
    buffer: bytes  # the normalised bytes, to turn a window back into words
    word_span: np.ndarray  # int64 (start, end) byte offsets per word in `buffer`

    @property
    def n_texts(self) -> int:
        return len(self.text_start) - 1

    def text_words(self, text: int, first: int = 0, n: int | None = None) -> str:
        """Words `first .. first + n` of one text, joined by spaces (for a readable detail)."""
        lo = int(self.text_start[text]) + first
        hi = int(self.text_start[text + 1]) if n is None else lo + n
        return " ".join(self.buffer[s:e].decode(errors="replace") for s, e in self.word_span[lo:hi])


def hash_words(texts: Sequence[str]) -> WordBatch:
    """Tokenize and hash every word of every text in one vectorised pass."""
    joined = "\x01".join(normalize_words(t.replace("\x01", " ")) for t in texts)
    buf = joined.encode("utf-8", errors="replace").lower().translate(_TABLE)
    n = len(buf)
    arr = np.frombuffer(buf + bytes(16), dtype=np.uint8)  # padded: 8-byte reads past a word
    in_word = np.zeros(n + 2, dtype=bool)
    np.greater(arr[:n], 0x20, out=in_word[1 : n + 1])
    edges = np.flatnonzero(in_word[1:] != in_word[:-1])  # alternately a word's start and end
    starts, ends = edges[0::2], edges[1::2]
    lens = ends - starts
    text_of = np.searchsorted(np.flatnonzero(arr[:n] == _SEP), starts).astype(np.int64)
    text_start = np.searchsorted(text_of, np.arange(len(texts) + 1)).astype(np.int64)
    # Word hash: the word read as 8-byte integers (bytes past its end zeroed), each chunk
    # mixed with its position, summed, then mixed with the length. Words over 256 bytes
    # (pasted blobs) hash their first 256 bytes and their length.
    rows = np.lib.stride_tricks.as_strided(arr, shape=(n + 9, 8), strides=(1, 1))
    acc = np.zeros(len(starts), dtype=np.uint64)
    todo = np.arange(len(starts))
    lane = np.arange(8)
    for k in range(32):
        left = lens[todo] - 8 * k
        chunk = rows[starts[todo] + 8 * k] * (lane < left[:, None])
        acc[todo] += mix64(chunk.view(np.uint64).ravel() + _BYTE_COEF[k])
        todo = todo[left > 8]
        if not len(todo):
            break
    word_hash = mix64(acc ^ (lens.astype(np.uint64) * _GOLDEN))
    span = np.stack([starts, ends], axis=1)
    return WordBatch(word_hash, text_of, text_start, buf, span)


def ngram_hash(word_hashes: np.ndarray) -> int:
    """Hash of one word sequence; equals the window hash `windows` gives the same words."""
    n = len(word_hashes)
    acc = np.sum(word_hashes * _WORD_COEF[:n], dtype=np.uint64)
    return int(mix64(np.array([acc ^ np.uint64(n)], dtype=np.uint64))[0])


def window_hashes(word_hash: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Hashes of the n-word windows beginning at word indices `starts` (as `windows` has them).

    For a few positions (candidates) this costs n passes over `starts`, not over the batch.
    """
    acc = np.zeros(len(starts), dtype=np.uint64)
    for k in range(n):
        acc += word_hash[starts + k] * _WORD_COEF[k]
    return mix64(acc ^ np.uint64(n))


@dataclass(frozen=True)
class Windows:
    """Hashes of n-word windows and where they start (word index in the batch)."""

    hash: np.ndarray  # uint64
    start: np.ndarray  # int64 word index of the first word
    length: np.ndarray  # int64 words in the window
    text: np.ndarray  # int64 text index


def windows(batch: WordBatch, n: int, *, short: bool = False) -> Windows:
    """Every run of n consecutive words inside one text, hashed.

    With `short`, a text of 1..n-1 words also yields one window: the whole text. That is
    what shingling wants (a short answer still counts); n-gram overlap does not.
    """
    full = windows_many(batch, [n])[n]
    if not short:
        return full
    counts = np.diff(batch.text_start)
    small = np.flatnonzero((counts > 0) & (counts < n))
    if not len(small):
        return full
    first, lens = batch.text_start[small], counts[small]
    offsets = np.cumsum(lens) - lens
    pos = np.arange(lens.sum()) - np.repeat(offsets, lens)
    idx = np.repeat(first, lens) + pos
    sums = np.add.reduceat(batch.word_hash[idx] * _WORD_COEF[pos], offsets)
    whole = Windows(mix64(sums ^ lens.astype(np.uint64)), first, lens, small)
    order = np.argsort(np.concatenate([full.start, whole.start]), kind="stable")
    return Windows(*(np.concatenate([getattr(full, f), getattr(whole, f)])[order]
                     for f in ("hash", "start", "length", "text")))  # fmt: skip


def windows_many(batch: WordBatch, lengths: Sequence[int]) -> dict[int, Windows]:
    """`windows` for several n at once: the n-word sums grow one word at a time, so all
    lengths up to max(n) cost max(n) passes instead of their sum."""
    wanted = sorted(set(lengths))
    if wanted and (wanted[0] < 1 or wanted[-1] > len(_WORD_COEF)):
        raise ValueError(f"n-gram lengths must be 1..{len(_WORD_COEF)}, got {wanted}")
    h, text_of = batch.word_hash, batch.text_of
    out: dict[int, Windows] = {}
    empty = np.zeros(0, np.int64)
    acc = h * _WORD_COEF[0]
    for n in range(1, (wanted[-1] if wanted else 0) + 1):
        m = len(h) - n + 1
        if m <= 0:
            out.update({k: Windows(np.zeros(0, np.uint64), empty, empty, empty)
                        for k in wanted if k >= n})  # fmt: skip
            break
        if n > 1:
            acc = acc[:m] + h[n - 1 : n - 1 + m] * _WORD_COEF[n - 1]
        if n in wanted:
            start = np.flatnonzero(text_of[:m] == text_of[n - 1 :])
            out[n] = Windows(mix64(acc[start] ^ np.uint64(n)), start,
                             np.full(len(start), n, np.int64), text_of[start])  # fmt: skip
    return out


class HashIndex:
    """uint64 key -> int64 value, first value kept; sorted numpy segments (an LSM tree).

    `add` appends a sorted segment and merges segments of similar size, so a lookup
    searches O(log n) sorted arrays and memory is 16 bytes per key.
    """

    def __init__(self) -> None:
        self._keys: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self._keys, self._values, strict=True))

    def get(self, keys: np.ndarray) -> np.ndarray:
        """Values for the keys; -1 where a key is absent.

        The keys are searched in sorted order: numpy's binary search starts from the previous
        key's position, which makes a batch of lookups ~4x faster than in arrival order.
        """
        if not self._keys or not len(keys):
            return np.full(len(keys), -1, dtype=np.int64)
        order = np.argsort(keys)
        ordered = keys[order]
        found = np.full(len(keys), -1, dtype=np.int64)
        for seg_keys, seg_values in zip(self._keys, self._values, strict=True):
            pos = np.searchsorted(seg_keys, ordered)
            pos[pos == len(seg_keys)] = 0
            hit = seg_keys[pos] == ordered
            found[hit] = seg_values[pos[hit]]  # a key lives in one segment only
        out = np.empty_like(found)
        out[order] = found
        return out

    def add(self, keys: np.ndarray, values: np.ndarray, *, absent: bool = False) -> None:
        """Insert keys not present yet; for a key given twice the first value wins.

        `absent`: the caller has just looked the keys up and none is present (saves a lookup).
        """
        if not len(keys):
            return
        if not absent:
            fresh = self.get(keys) < 0
            keys, values = keys[fresh], values[fresh]
        keys, first = np.unique(keys, return_index=True)
        if not len(keys):
            return
        self._keys.append(keys)
        self._values.append(values[first].astype(np.int64))
        while len(self._keys) > 1 and len(self._keys[-1]) * 2 >= len(self._keys[-2]):
            k = np.concatenate([self._keys.pop(-2), self._keys.pop()])
            v = np.concatenate([self._values.pop(-2), self._values.pop()])
            order = np.argsort(k, kind="stable")
            self._keys.append(k[order])
            self._values.append(v[order])


def key64(hex_digest: str) -> int:
    """The first 64 bits of a hex digest, as the uint64 key `HashIndex` stores."""
    return int(hex_digest[:16], 16) & _MASK64
