"""Curation benchmark: rows/s per stage, peak memory, and near-duplicate precision/recall.

    python bench/curate.py                      # N = 10k and 100k (a few minutes on 2 cores)
    python bench/curate.py --sizes 1000000      # the 1M run (1.2 GB of JSONL, ~10 minutes)
    python bench/curate.py --sizes 10000 --skip-baselines

For each N it generates N realistic conversations (Zipf vocabulary; prompts and answers
log-normal in length, median 20 and 70 words, like real instruction data; 15% with 2-3
turns; a third with one of 20 shared system prompts; 70% alpaca JSONL + 30% a messages
JSON array; ~0.8 KB a row) with
planted exact duplicates (3%), near-duplicates (3%, one to a dozen words edited) and
broken rows (1%), then, each in its own process so peak RSS is its own:

1. tunegate's curation funnel (the same stages `tunegate curate` runs, contamination
   against the shipped eval sets) plus the DuckDB verdict writes: rows/s per stage;
2. the obvious baselines on the same files: pandas `read_json` + `drop_duplicates` for
   exact dedup, and datasketch `MinHash` + `MinHashLSH` (defaults, threshold 0.8) for
   near-duplicates (skipped above 100k rows: it would take most of an hour);
3. on the first 10k rows, near-duplicate precision and recall of both against
   brute-force exact Jaccard over all pairs (sparse matrix product).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SEED = 20241122
VOCAB = 30_000
SHINGLE = 3
THRESHOLD = 0.8


# -- 1. data -----------------------------------------------------------------------------------


def _vocabulary(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    syll = np.array(["ka", "to", "ri", "men", "sa", "lo", "ve", "dar", "in", "el", "or", "tu",
                     "ba", "ne", "qui", "st", "an", "pe", "co", "ly"])  # fmt: skip
    words: set[str] = set()
    while len(words) < VOCAB:
        picks = rng.integers(0, len(syll), (50_000, 4))
        sizes = rng.integers(1, 5, 50_000)
        words.update("".join(syll[p[:k]]) for p, k in zip(picks, sizes, strict=True))
    vocab = np.array(sorted(words)[:VOCAB], dtype=object)
    rng.shuffle(vocab)
    weights = 1.0 / np.arange(1, VOCAB + 1) ** 1.05
    return vocab, np.cumsum(weights / weights.sum())


def _text(rng: np.random.Generator, vocab: np.ndarray, cdf: np.ndarray, n: int) -> str:
    """n Zipf-distributed words as sentences (`cdf`: cumulative word probabilities)."""
    words = vocab[np.minimum(np.searchsorted(cdf, rng.random(n)), VOCAB - 1)].tolist()
    cuts = np.cumsum(rng.integers(6, 18, n // 6 + 1)).tolist()
    marks = rng.choice(np.array([".", ".", ".", "?", "!"]), len(cuts)).tolist()
    out, k = [], 0
    for end, mark in zip(cuts, marks, strict=True):
        if k >= n:
            break
        sent = words[k:end]
        sent[0] = sent[0].capitalize()
        out.append(" ".join(sent) + mark)
        k = end
    return " ".join(out)


def _length(rng: np.random.Generator, median: int, low: int, high: int) -> int:
    """Words in a message: log-normal like real instruction data (long right tail)."""
    return int(np.clip(rng.lognormal(np.log(median), 0.8), low, high))


def _edit(rng: np.random.Generator, vocab: np.ndarray, text: str, n_edits: int) -> str:
    words = text.split(" ")
    for _ in range(n_edits):
        i = int(rng.integers(0, len(words)))
        op = rng.integers(0, 3)
        if op == 0:
            words[i] = str(vocab[rng.integers(0, 2000)])
        elif op == 1:
            words.insert(i, str(vocab[rng.integers(0, 2000)]))
        elif len(words) > 3:
            del words[i]
    return " ".join(words)


def generate(n: int, directory: Path) -> list[Path]:
    """Write N conversations: `chats.jsonl` (alpaca) and `chats.json` (messages array)."""
    rng = np.random.default_rng(SEED)
    vocab, p = _vocabulary(rng)
    systems = [_text(rng, vocab, p, int(rng.integers(8, 30))) for _ in range(20)]
    jsonl = (directory / "chats.jsonl").open("w")
    array = (directory / "chats.json").open("w")
    array.write("[\n")
    first = True
    kept: list[list[tuple[str, str]]] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.03 and kept:  # exact duplicate (half re-typed: case and spaces)
            conv = kept[int(rng.integers(0, len(kept)))]
            if rng.random() < 0.5:
                conv = [(r, "  " + c.upper().replace(" ", "  ")) for r, c in conv]
        elif roll < 0.06 and kept:  # near duplicate: a few words of the answer edited
            conv = list(kept[int(rng.integers(0, len(kept)))])
            role, last = conv[-1]
            conv[-1] = (role, _edit(rng, vocab, last, int(rng.integers(1, 13))))
        else:
            conv = []
            if rng.random() < 0.33:
                conv.append(("system", systems[int(rng.integers(0, 20))]))
            for _ in range(1 if rng.random() < 0.85 else int(rng.integers(2, 4))):
                conv.append(("user", _text(rng, vocab, p, _length(rng, 20, 3, 400))))
                conv.append(("assistant", _text(rng, vocab, p, _length(rng, 70, 3, 1500))))
            if len(kept) < 50_000:
                kept.append(conv)
            elif rng.random() < 0.02:
                kept[int(rng.integers(0, len(kept)))] = conv
        broken = rng.random() < 0.01
        if rng.random() < 0.7:
            system = [c for r, c in conv if r == "system"]
            turns = [c for r, c in conv if r != "system"]
            row = {"instruction": turns[-2], "input": "", "output": "" if broken else turns[-1]}
            if system:
                row["system"] = system[0]
            if len(turns) > 2:
                row["history"] = [[turns[k], turns[k + 1]] for k in range(0, len(turns) - 2, 2)]
            line = json.dumps(row)
            jsonl.write((line[: len(line) // 2] if broken and rng.random() < 0.5 else line) + "\n")
        else:
            msgs = [{"role": r, "content": c} for r, c in conv]
            if broken:
                msgs = msgs[:-1]  # no answer: the contract refuses it
            array.write(("" if first else ",\n") + json.dumps({"messages": msgs}))
            first = False
    array.write("\n]\n")
    jsonl.close()
    array.close()
    return [directory / "chats.jsonl", directory / "chats.json"]


# -- 2. runs (each in a child process) ---------------------------------------------------------


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    """Resident memory now (Linux), to see whether it grows with the rows read."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_tunegate(directory: str) -> dict[str, object]:
    """The curation funnel with lineage writes, timed per stage."""
    from tunegate.config import parse_config
    from tunegate.curation.checks import batch_checks
    from tunegate.curation.funnel import AcceptedRecords, Funnel, frozen_heap
    from tunegate.curation.run import RunWriter, _rows
    from tunegate.lineage import Lineage

    d = Path(directory)
    config = parse_config({
        "workspace": str(d / "ws"),
        "data": {"sources": [{"path": "chats.jsonl"}, {"path": "chats.json"}]},
        "eval": {"heldout_path": str(REPO / "evals/data/heldout.jsonl")},
        "contamination": {"eval_files": [str(REPO / "evals/data")]},
    }, root=d)  # fmt: skip
    t0 = time.perf_counter()
    stages = batch_checks(config, d)
    setup = time.perf_counter() - t0
    funnel = Funnel(stages)
    lineage = Lineage(d / "bench.duckdb")
    run_id = lineage.start_run("bench", "h", "{}")
    writer = RunWriter(lineage, run_id, AcceptedRecords(d / "accepted.jsonl", cache_rows=0))
    write_s, files = 0.0, []
    memory, mark = [], 4096  # (rows read, RSS MB, dedup index MB) at 4k, 8k, 16k, ... rows
    t0 = time.perf_counter()
    with frozen_heap():  # as `curate` does
        for batch in funnel.run(_rows(config, files)):
            t1 = time.perf_counter()
            writer.add(batch.verdicts, batch.accepted)
            write_s += time.perf_counter() - t1
            if funnel.stats.n_input >= mark:
                index_mb = sum(getattr(s, "nbytes", 0) for s in stages) / 2**20
                memory.append((funnel.stats.n_input, _rss_mb(), index_mb))
                mark *= 2
    t1 = time.perf_counter()
    writer.close()
    writer.shutdown()
    write_s += time.perf_counter() - t1
    total = time.perf_counter() - t0
    writer.spool.close()
    st = funnel.stats
    index_bytes = sum(getattr(s, "nbytes", 0) for s in stages)
    memory.append((st.n_input, _rss_mb(), index_bytes / 2**20))
    near = next(s for s in stages if s.stage == "near_dedup")
    return {
        "rows": st.n_input, "counts": dict(st.counts), "setup_s": setup, "total_s": total,
        "write_s": write_s, "overhead": st.overhead, "mib": sum(
            p.stat().st_size for p in d.glob("chats.json*") if "valid" not in p.name) / 2**20,
        "stages": {s.name: {"rows": s.rows_in, "seconds": s.seconds, "cpu": s.cpu_seconds,
                            "rejected": s.rejected} for s in st.stages.values()},
        "peak_mb": _peak_mb(), "index_mb": index_bytes / 2**20, "memory": memory,
        "near_candidates": near.n_candidates,
        "recorded": sum(lineage.verdict_counts(run_id).values()),
    }  # fmt: skip


def run_pandas(directory: str) -> dict[str, object]:
    """Baseline: pandas reads the JSONL whole, normalises, drop_duplicates.

    pandas stops at the first broken line, so it reads a copy without them (made untimed).
    """
    import pandas as pd

    src = Path(directory) / "chats.jsonl"
    try:
        pd.read_json(src, lines=True, dtype=False, nrows=200_000)
        crashes = ""
    except ValueError as exc:
        crashes = str(exc)[:120]
    clean = Path(directory) / "chats.valid.jsonl"
    if not clean.exists():
        with src.open() as f, clean.open("w") as g:
            for line in f:
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    continue
                g.write(line)
    t0 = time.perf_counter()
    df = pd.read_json(clean, lines=True, dtype=False)
    read = time.perf_counter() - t0
    text = (df["instruction"].astype(str) + "\x1f" + df["output"].astype(str)).str.lower()
    text = text.str.split().str.join(" ")
    kept = ~text.duplicated()
    total = time.perf_counter() - t0
    return {"rows": len(df), "read_s": read, "total_s": total, "kept": int(kept.sum()),
            "peak_mb": _peak_mb(), "crashes_on_raw": crashes}  # fmt: skip


def _conversation_texts(directory: Path, limit: int | None = None) -> list[list[str]]:
    """Messages of every parsed row, in funnel order, via tunegate's own ingest."""
    from tunegate.data.ingest import ingest_file
    from tunegate.data.records import Record

    out: list[list[str]] = []
    for path in (directory / "chats.jsonl", directory / "chats.json"):
        for item in ingest_file(path, "auto", "human"):
            if isinstance(item, Record) and all(c.strip() for _, c in item.messages):
                out.append([c for _, c in item.messages])
                if limit and len(out) >= limit:
                    return out
    return out


def run_datasketch(directory: str, limit: int | None = None) -> dict[str, object]:
    """Baseline: datasketch MinHash (128 perm) + MinHashLSH(threshold 0.8), query then insert."""
    from datasketch import MinHash, MinHashLSH

    from tunegate.curation.shingles import words

    texts = _conversation_texts(Path(directory), limit)
    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    flagged = []
    for i, msgs in enumerate(texts):
        shingles = set()
        for m in msgs:
            w = words(m)
            grams = [" ".join(w[k : k + SHINGLE]) for k in range(len(w) - SHINGLE + 1)]
            shingles.update(grams or [" ".join(w)])
        mh = MinHash(num_perm=128)
        mh.update_batch([s.encode() for s in shingles])
        if lsh.query(mh):
            flagged.append(i)
        else:
            lsh.insert(str(i), mh)
    total = time.perf_counter() - t0
    return {"rows": len(texts), "total_s": total, "flagged": flagged, "peak_mb": _peak_mb()}


def run_nearonly(directory: str, limit: int) -> dict[str, object]:
    """tunegate's near-duplicate stage alone on the same rows as the brute force."""
    from tunegate.curation.checks.base import Batch
    from tunegate.curation.checks.near_dup import NearDuplicates
    from tunegate.data.records import Record

    texts = _conversation_texts(Path(directory), limit)
    records = [Record(tuple(("user", m) for m in msgs), "human", "x", i)
               for i, msgs in enumerate(texts)]  # fmt: skip
    near = NearDuplicates(THRESHOLD, 128, SHINGLE)
    flagged: list[int] = []
    t0 = time.perf_counter()
    for s in range(0, len(records), 4096):
        batch = Batch(records[s : s + 4096])
        found = near.check_batch(batch, list(range(len(batch.records))))
        flagged.extend(s + i for i in sorted(found))
    return {"rows": len(records), "total_s": time.perf_counter() - t0, "flagged": flagged}


def brute_force(directory: str, limit: int) -> dict[str, object]:
    """Exact Jaccard of every pair (sparse product), then the same first-kept rule."""
    import scipy.sparse as sp

    from tunegate.curation.shingles import hash_words, windows

    texts = _conversation_texts(Path(directory), limit)
    t0 = time.perf_counter()
    flat = [m for msgs in texts for m in msgs]
    owner = np.repeat(np.arange(len(texts)), [len(m) for m in texts])
    w = windows(hash_words(flat), SHINGLE, short=True)
    pairs = np.unique(np.stack([owner[w.text], w.hash.view(np.int64)], axis=1), axis=0)
    _, col = np.unique(pairs[:, 1], return_inverse=True)
    x = sp.csr_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0], col)),
                      shape=(len(texts), col.max() + 1))  # fmt: skip
    sizes = np.asarray(x.sum(axis=1)).ravel()
    best = np.zeros(len(texts))  # best Jaccard with an earlier row
    partner: dict[int, list[tuple[int, float]]] = {}
    for lo in range(0, len(texts), 1000):
        inter = (x[lo : lo + 1000] @ x.T).tocoo()
        i, j, v = inter.row + lo, inter.col, inter.data
        keep = j < i
        i, j, v = i[keep], j[keep], v[keep]
        jac = v / (sizes[i] + sizes[j] - v)
        hit = jac >= 0.5
        for a, b, s in zip(i[hit], j[hit], jac[hit], strict=True):
            partner.setdefault(int(a), []).append((int(b), float(s)))
    kept = np.ones(len(texts), dtype=bool)
    for a in range(len(texts)):  # greedy, first occurrence kept: what a streaming dedup does
        sims = [s for b, s in partner.get(a, []) if kept[b]]
        best[a] = max(sims, default=0.0)
        if best[a] >= THRESHOLD:
            kept[a] = False
    return {"rows": len(texts), "seconds": time.perf_counter() - t0, "best": best.tolist()}


def _child(fn: str, *args: object) -> dict[str, object]:
    code = (f"import sys, json; sys.path.insert(0, {str(REPO / 'bench')!r}); import curate as b; "
            f"print(json.dumps(b.{fn}(*{list(args)!r})))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{fn} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pr(flagged: list[int], best: list[float]) -> dict[str, float]:
    f = set(flagged)
    b = np.asarray(best)
    truth_80 = set(np.flatnonzero(b >= THRESHOLD).tolist())
    truth_85 = set(np.flatnonzero(b >= 0.85).tolist())
    return {
        "precision": len(f & truth_80) / max(len(f), 1),
        "recall_at_0.80": len(f & truth_80) / max(len(truth_80), 1),
        "recall_at_0.85": len(f & truth_85) / max(len(truth_85), 1),
        "truth_0.85": len(truth_85), "flagged": len(f),
    }  # fmt: skip


def bench(n: int, baselines: bool, work: Path) -> dict[str, object]:
    d = work / f"n{n}"
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "chats.json").exists():
        t0 = time.perf_counter()
        generate(n, d)
        mib = sum(p.stat().st_size for p in d.glob("chats.*")) / 2**20
        print(f"[{n}] generated in {time.perf_counter() - t0:.0f} s ({mib:.0f} MiB)", flush=True)
    out: dict[str, object] = {"n": n, "tunegate": _child("run_tunegate", str(d))}
    print(f"[{n}] tunegate done", flush=True)
    if baselines:
        out["pandas"] = _child("run_pandas", str(d))
        if n <= 100_000:
            out["datasketch"] = _child("run_datasketch", str(d))
    if n == 10_000:
        sample = 10_000
        truth = _child("brute_force", str(d), sample)
        ours = _child("run_nearonly", str(d), sample)
        out["quality"] = {
            "tunegate": _pr(ours["flagged"], truth["best"]),  # type: ignore[arg-type]
            "brute_force_s": truth["seconds"],
            "near_only_s": ours["total_s"],
        }
        if "datasketch" in out:
            ds = out["datasketch"]["flagged"]  # type: ignore[index]
            out["quality"]["datasketch"] = _pr(ds[:], truth["best"])  # type: ignore[index]
    return out


def report(results: list[dict[str, object]]) -> str:
    """Markdown tables: CPU-time rows/s per stage (steady on a shared machine) and wall."""
    head = (
        "| N | MiB | ingest | contract | exact dedup | contamination | near dedup "
        "| response dedup | ingest+schema+exact | all stages | wall: ingest+schema+exact "
        "| wall: all + DuckDB writes | peak RSS | dedup indexes |"
    )
    rows = [head, "|" + "---|" * 14]
    for r in results:
        t = r["tunegate"]
        s = t["stages"]  # type: ignore[index]
        n = t["rows"]

        def cpu(k: str, s: dict = s) -> str:
            return f"{s[k]['rows'] / max(s[k]['cpu'], 1e-9):,.0f}"

        first = ("ingest", "contract", "exact_dedup")
        first_cpu = sum(s[k]["cpu"] for k in first)
        all_cpu = sum(v["cpu"] for v in s.values()) + sum(t["overhead"].values())
        first_wall = sum(s[k]["seconds"] for k in first)
        rows.append(
            f"| {r['n']:,} | {t['mib']:,.0f} | {cpu('ingest')} | {cpu('contract')} | "
            f"{cpu('exact_dedup')} | {cpu('contamination')} | {cpu('near_dedup')} | "
            f"{cpu('response_dedup')} | **{n / first_cpu:,.0f}** | **{n / all_cpu:,.0f}** | "
            f"{n / first_wall:,.0f} | {n / (t['total_s']):,.0f} | {t['peak_mb']:,.0f} MB | "
            f"{t['index_mb']:,.0f} MB |"
        )  # fmt: skip
    memory = ["| N | input | RSS after the first 4k rows | RSS at the end | growth "
              "| of which dedup indexes |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        t = r["tunegate"]
        (_, rss0, idx0), (_, rss1, idx1) = t["memory"][0], t["memory"][-1]  # type: ignore[index]
        memory.append(f"| {r['n']:,} | {t['mib']:,.0f} MiB | {rss0:,.0f} MB | {rss1:,.0f} MB | "
                      f"{rss1 - rss0:+,.0f} MB | {idx1 - idx0:+,.0f} MB |")  # fmt: skip
    lines = ["rows/s; stage columns: CPU time of the stage (word hashing and verdict building "
             "are counted in `all stages`)", "", *rows, "",
             "Memory while streaming (resident set of the curation process):", "", *memory, "",
             "Baselines on the same files (wall clock, own process):", "",
             "| N | pandas read_json + drop_duplicates (JSONL part) "
             "| datasketch MinHash+MinHashLSH |", "|---|---|---|"]  # fmt: skip
    for r in results:
        pd_cell = ds_cell = "-"
        if "pandas" in r:
            p = r["pandas"]
            crash = "; crashes on the raw file's broken lines" if p["crashes_on_raw"] else ""
            pd_cell = f"{p['rows'] / p['total_s']:,.0f} rows/s, peak {p['peak_mb']:,.0f} MB{crash}"
        if "datasketch" in r:
            q = r["datasketch"]
            ds_cell = f"{q['rows'] / q['total_s']:,.0f} rows/s, peak {q['peak_mb']:,.0f} MB"
        lines.append(f"| {r['n']:,} | {pd_cell} | {ds_cell} |")
    for r in results:
        q = r.get("quality")
        if q:
            lines += ["", f"Near-duplicates on the first {r['n']:,} rows against brute-force exact "
                      f"Jaccard over all pairs ({q['brute_force_s']:.0f} s):", "",
                      "| method | precision (J >= 0.8) | recall at J >= 0.8 | recall at J >= 0.85 "
                      "| rows with an earlier J >= 0.85 row | flagged |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for name in ("tunegate", "datasketch"):
                if name in q:
                    m = q[name]
                    lines.append(
                        f"| {name} | {m['precision']:.3f} | {m['recall_at_0.80']:.3f} | "
                        f"{m['recall_at_0.85']:.3f} | {m['truth_0.85']} | {m['flagged']} |"
                    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tunegate-bench")
    ap.add_argument("--json", type=Path, help="Also write the raw results here.")
    args = ap.parse_args()
    from tunegate.precision import cpu_kind

    print(f"{os.cpu_count()} CPUs ({cpu_kind()}); data under {args.work}", flush=True)
    results = [bench(n, not args.skip_baselines, args.work) for n in args.sizes]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(report(results))


if __name__ == "__main__":
    main()
