"""Near-duplicate conversations: MinHash LSH to find candidates, exact Jaccard to decide.

A conversation is the set of its word shingles (`shingle_size` consecutive words inside
one message; a shorter message is one shingle). Two conversations are near-duplicates
when the Jaccard similarity of their shingle sets reaches `threshold`.

1. MinHash: `num_perm` 32-bit hash permutations (a*x + b mod 2^32) of the shingle
   hashes; a row's signature is the minimum of each, computed for a whole batch with one
   numpy reduction per permutation.
2. LSH: the signature is cut into `bands` bands of `rows` values; two rows sharing any
   band are candidates. Bands and rows are chosen so that a pair exactly at the threshold
   becomes a candidate with probability >= 0.99 (more bands: fewer misses, more checks).
3. Exact check: a candidate pair is a near-duplicate only if the exact Jaccard of the two
   shingle sets reaches the threshold, so the LSH's false positives cost time, not rows.

The kept rows' band keys live in a `HashIndex` (~21 keys x 16 bytes a row); their shingle
sets go to a spool file on disk and are read back only for candidates. Memory grows with
the index only, never with the text.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunegate.config import PipelineConfig
from tunegate.curation.checks.base import Batch, CheckSetup, Finding
from tunegate.curation.checks.dedup import KeptRows
from tunegate.curation.shingles import HashIndex, key64, mix64, windows

_EMPTY = np.iinfo(np.uint32).max


@dataclass(frozen=True)
class LshParams:
    bands: int
    rows: int

    def candidate_probability(self, jaccard: float) -> float:
        """Chance that a pair with this Jaccard shares at least one band."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands


def lsh_params(threshold: float, num_perm: int, min_recall: float = 0.99) -> LshParams:
    """The most rows per band (fewest false candidates) that still catch a pair at the
    threshold with probability `min_recall`."""
    best = LshParams(num_perm, 1)
    for r in range(1, num_perm + 1):
        p = LshParams(num_perm // r, r)
        if p.candidate_probability(threshold) >= min_recall:
            best = p
    return best


class MinHasher:
    """`num_perm` seeded permutations of 32-bit shingle hashes."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
        self.b = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
        self.num_perm = num_perm

    def signatures(self, shingles: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Signatures [rows, num_perm]; `starts` (rows + 1) delimits each row's shingles.

        A row without shingles gets the all-max signature (and is never a candidate).
        """
        n = len(starts) - 1
        sig = np.full((n, self.num_perm), _EMPTY, dtype=np.uint32)
        nonempty = np.flatnonzero(np.diff(starts) > 0)
        if not len(nonempty):
            return sig
        h = (shingles >> np.uint64(32)).astype(np.uint32)
        at = starts[nonempty]
        v = np.empty(len(h), dtype=np.uint32)
        for p in range(self.num_perm):
            np.multiply(h, self.a[p], out=v)
            v += self.b[p]
            sig[nonempty, p] = np.minimum.reduceat(v, at)
        return sig


_BAND_COEF = np.random.default_rng(7).integers(1, 2**63, 64, dtype=np.uint64) | np.uint64(1)


def band_keys(sig: np.ndarray, params: LshParams) -> np.ndarray:
    """One 64-bit key per (row, band): the band's values hashed with the band number."""
    n = len(sig)
    bands = sig[:, : params.bands * params.rows].reshape(n, params.bands, params.rows)
    acc = np.zeros((n, params.bands), dtype=np.uint64)
    for j in range(params.rows):
        acc += bands[:, :, j].astype(np.uint64) * _BAND_COEF[j]
    acc += np.arange(params.bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return mix64(acc)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique uint64 arrays."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


class ShingleSpool:
    """Shingle sets of kept rows in a temporary file, read back by position."""

    def __init__(self, directory: Path | None = None):
        # Open for the stage's lifetime; `close` (called by curation) deletes it.
        self._file = tempfile.TemporaryFile(dir=directory, prefix="tunegate-shingles-")  # noqa: SIM115
        self._offsets = array("q", [0])

    def append(self, values: np.ndarray, sizes: np.ndarray) -> None:
        """Append consecutive sets: `values` holds them back to back, `sizes` their lengths."""
        if not len(sizes):
            return
        self._file.seek(0, os.SEEK_END)
        self._file.write(values.astype(np.uint64).tobytes())
        ends = self._offsets[-1] + np.cumsum(sizes.astype(np.int64)) * 8
        self._offsets.extend(ends.tolist())

    def __getitem__(self, position: int) -> np.ndarray:
        lo, hi = self._offsets[position], self._offsets[position + 1]
        self._file.flush()
        data = os.pread(self._file.fileno(), hi - lo, lo)
        return np.frombuffer(data, dtype=np.uint64)

    def close(self) -> None:
        self._file.close()


class NearDuplicates:
    """Rejects a conversation whose shingle-set Jaccard with a kept one reaches `threshold`."""

    reason = "near_duplicate"
    meaning = "MinHash Jaccard above the threshold with an earlier row"
    stage = "near_dedup"
    order = 50
    needs_tokenizer = False

    @staticmethod
    def enabled(config: PipelineConfig) -> bool:
        return config.dedup.near

    @classmethod
    def from_config(cls, config: PipelineConfig, setup: CheckSetup) -> NearDuplicates:
        d = config.dedup
        return cls(d.near_threshold, d.num_perm, d.shingle_size, setup.spool_dir)

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        shingle_size: int = 3,
        spool_dir: Path | None = None,
    ):
        self.threshold = threshold
        self.shingle_size = shingle_size
        self.hasher = MinHasher(num_perm)
        self.params = lsh_params(threshold, num_perm)
        self.index = HashIndex()
        self.kept = KeptRows()
        self.cluster_of = array("Q")  # first 64 bits of each kept row's record id
        self.spool = ShingleSpool(spool_dir)
        self.n_candidates = 0  # exact Jaccard computations (LSH candidates)

    def shingle_sets(self, batch: Batch, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes of the rows, grouped by row, and the (rows + 1) group starts."""
        w = windows(batch.words, self.shingle_size, short=True)
        record = batch.message_record[w.text]
        alive = np.zeros(len(batch.records), dtype=bool)
        alive[np.asarray(rows, dtype=np.int64)] = True
        keep = alive[record]
        local = np.full(len(batch.records), -1, dtype=np.int64)
        local[np.asarray(rows, dtype=np.int64)] = np.arange(len(rows))
        owner = local[record[keep]]  # ascending: windows come in text order, texts in row order
        shingles = w.hash[keep]
        starts = np.searchsorted(owner, np.arange(len(rows) + 1)).astype(np.int64)
        return shingles, starts

    def check_batch(self, batch: Batch, rows: Sequence[int]) -> dict[int, Finding]:
        rows = list(rows)
        if not rows:
            return {}
        n, bands = len(rows), self.params.bands
        shingles, starts = self.shingle_sets(batch, rows)
        keys = band_keys(self.hasher.signatures(shingles, starts), self.params)
        has_shingles = np.diff(starts) > 0
        hits = self.index.get(keys.ravel()).reshape(keys.shape)
        hits[~has_shingles] = -1
        # Exact sets: each row's distinct shingles, sorted. A set element is the top 40 bits
        # of the shingle hash, so one sort of (row << 40 | hash >> 24) does every row at once.
        owner = np.repeat(np.arange(n, dtype=np.uint64), np.diff(starts))
        packed = np.sort((owner << np.uint64(40)) | (shingles >> np.uint64(24)))
        packed = packed[np.concatenate(([True], packed[1:] != packed[:-1]))]
        set_start = np.searchsorted(packed >> np.uint64(40), np.arange(n + 1, dtype=np.uint64))
        values = packed & np.uint64((1 << 40) - 1)

        def set_of(j: int) -> np.ndarray:
            return values[set_start[j] : set_start[j + 1]]

        # Rows of this batch sharing a band with an earlier row of this batch.
        in_batch: dict[int, set[int]] = defaultdict(set)
        flat = keys[has_shingles].ravel()
        band_owner = np.repeat(np.flatnonzero(has_shingles), bands)
        order = np.argsort(flat, kind="stable")
        flat, band_owner = flat[order], band_owner[order]
        same = np.flatnonzero(flat[1:] == flat[:-1])
        if len(same):
            groups: dict[int, set[int]] = defaultdict(set)
            for p in np.unique(np.concatenate([same, same + 1])).tolist():
                groups[int(flat[p])].add(int(band_owner[p]))
            for members in groups.values():
                ordered = sorted(members)
                for k, later in enumerate(ordered[1:], start=1):
                    in_batch[later].update(ordered[:k])

        # Only rows with a candidate need a decision; every other row with shingles passes.
        passed = has_shingles.copy()
        suspects = sorted(set(np.flatnonzero((hits >= 0).any(axis=1)).tolist()) | set(in_batch))
        matches: dict[int, tuple[float, int]] = {}  # row -> (Jaccard, kept position or -1-row)
        base = len(self.kept)
        for j in suspects:
            best: tuple[float, int] | None = None
            for pos in np.unique(hits[j][hits[j] >= 0]).tolist():
                self.n_candidates += 1
                sim = jaccard(set_of(j), self.spool[pos])
                if sim >= self.threshold and (best is None or sim > best[0]):
                    best = (sim, pos)
            for k in sorted(in_batch.get(j, ())):
                if not passed[k] or not batch.viable(rows[k]):  # only a keepable copy counts
                    continue
                self.n_candidates += 1
                sim = jaccard(set_of(j), set_of(k))
                if sim >= self.threshold and (best is None or sim > best[0]):
                    best = (sim, -1 - k)  # a batch row: its kept position is known below
            if best is not None:
                passed[j] = False
                matches[j] = best
        # a copy the row checks reject is not kept: a later copy of its group may be
        keep = passed & np.fromiter((passed[j] and batch.viable(rows[j]) for j in range(n)),
                                    bool, n)  # fmt: skip
        kept_rows = np.flatnonzero(keep)
        positions = base + np.arange(len(kept_rows))
        position_of = dict(zip(kept_rows.tolist(), positions.tolist(), strict=True))
        for j in kept_rows.tolist():
            self.kept.add(batch.records[rows[j]])
            self.cluster_of.append(key64(batch.records[rows[j]].record_id))
        out: dict[int, Finding] = {}
        for j, (sim, pos) in matches.items():
            pos = position_of[-1 - pos] if pos < 0 else pos
            where = self.kept.where(pos)
            out[rows[j]] = Finding(
                f"near-duplicate of {where} (word {self.shingle_size}-shingle Jaccard "
                f"{sim:.3f} >= {self.threshold})",
                duplicate_of=where, cluster_id=f"n-{self.cluster_of[pos]:016x}",
            )  # fmt: skip
        sizes = np.diff(set_start)[kept_rows]
        element_row = np.repeat(np.arange(n), np.diff(set_start))
        self.spool.append(values[keep[element_row]], sizes)
        new = hits[kept_rows].ravel() < 0  # band keys no kept row had yet
        band_positions = np.repeat(positions, bands).astype(np.int64)
        self.index.add(keys[kept_rows].ravel()[new], band_positions[new], absent=True)
        return out

    @property
    def nbytes(self) -> int:
        """Memory of the index: band keys, kept-row references and cluster ids."""
        return self.index.nbytes + self.kept.nbytes + len(self.cluster_of) * 8

    def close(self) -> None:
        self.spool.close()
