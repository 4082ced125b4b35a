"""Build the general-capability eval files in `evals/data/general/` from `../shared/data`.

    python scripts/make_general_evals.py            # rewrite the files and their README section
    python scripts/make_general_evals.py --check    # exit 1 if any file differs

PIQA and ARC-Easy come from mosaicml/llm-foundry's local eval data (rows copied verbatim,
an `id` added); HellaSwag from klosax/hellaswag_text_data (6 lines per item, turned into
the same `{id, query, choices, gold}` rows). Each task keeps `N_ITEMS` items chosen by the
sha256 of `task:source index`, in that order: any file prefix (what `eval.general.limit`
reads) is itself a deterministic random sample, and the choice does not depend on Python's
RNG. The attribution section of `evals/data/README.md` is written between markers; the rest
of that README (the held-out set's section) is left as it is.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
OUT_DIR = Path("evals/data/general")
README = Path("evals/data/README.md")
N_ITEMS = 500
BEGIN = "<!-- BEGIN make_general_evals.py -->"
END = "<!-- END make_general_evals.py -->"

FOUNDRY = "mosaicml__llm-foundry"
FOUNDRY_COMMIT = "8c8dd48f72168c5d51e2f7b151595892a8fba43d"
KLOSAX = "klosax__hellaswag_text_data"
KLOSAX_COMMIT = "1105d370f8340eac3c63a91fd1fa58e8999f9505"

Item = dict[str, object]


def read_foundry(relpath: str) -> list[Item]:
    """llm-foundry multiple-choice rows `{query, choices, gold}`, verbatim."""
    path = SHARED / FOUNDRY / "scripts/eval/local_data" / relpath
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_hellaswag() -> list[Item]:
    """klosax's text form: `activity_label: ctx`, gold index, then the 4 endings."""
    path = SHARED / KLOSAX / "hellaswag_val_full.txt.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise SystemExit(f"{path}: {len(lines)} lines, not a multiple of 6")
    return [
        {"query": lines[i], "choices": lines[i + 2 : i + 6], "gold": int(lines[i + 1])}
        for i in range(0, len(lines), 6)
    ]


SOURCES: dict[str, Callable[[], list[Item]]] = {
    "piqa": lambda: read_foundry("commonsense_reasoning/piqa.jsonl"),
    "arc_easy": lambda: read_foundry("world_knowledge/arc_easy.jsonl"),
    "hellaswag": read_hellaswag,
}


def select(task: str, rows: list[Item], n: int) -> list[Item]:
    """`n` rows ordered by sha256(`task:index`), each with an `id` naming its source row."""
    order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(f"{task}:{i}".encode()).digest())
    return [{"id": f"{task}-{i:05d}", **rows[i]} for i in order[:n]]


def render(items: list[Item]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


FOUNDRY_URL = "[mosaicml/llm-foundry](https://github.com/mosaicml/llm-foundry)"
KLOSAX_URL = "[klosax/hellaswag_text_data](https://github.com/klosax/hellaswag_text_data)"
# (file, source, licence) rows of the attribution table.
ATTRIBUTION = [
    ("piqa", f"{FOUNDRY_URL} @ `{FOUNDRY_COMMIT[:12]}`, "
     "`scripts/eval/local_data/commonsense_reasoning/piqa.jsonl` (PIQA validation, 1,838 rows; "
     "rows copied verbatim, `id` added)",
     "PIQA (Bisk et al., 2020): Academic Free License 3.0; llm-foundry: Apache-2.0"),
    ("arc_easy", f"{FOUNDRY_URL} @ `{FOUNDRY_COMMIT[:12]}`, "
     "`scripts/eval/local_data/world_knowledge/arc_easy.jsonl` (ARC-Easy test, 2,376 rows; "
     "rows copied verbatim, `id` added)",
     "ARC (Clark et al., 2018, Allen Institute for AI): CC BY-SA 4.0, so this subset is "
     "CC BY-SA 4.0 too; llm-foundry: Apache-2.0"),
    ("hellaswag", f"{KLOSAX_URL} @ `{KLOSAX_COMMIT[:12]}`, `hellaswag_val_full.txt.bz2` "
     "(HellaSwag validation, 10,042 items, from "
     "[rowanz/hellaswag](https://github.com/rowanz/hellaswag); 6 text lines per item turned "
     "into one JSON row, words unchanged)",
     "HellaSwag (Zellers et al., 2019): MIT; klosax/hellaswag_text_data: MIT, "
     "Copyright (c) 2023 klosax"),
]  # fmt: skip


def readme_section(counts: dict[str, int]) -> str:
    table = "\n".join(f"| `general/{task}.jsonl` | {source} | {counts[task]} | {licence} |"
                      for task, source, licence in ATTRIBUTION)  # fmt: skip
    return f"""{BEGIN}
## `general/`: the general-capability suite (PIQA, ARC-Easy, HellaSwag)

Log-likelihood multiple-choice items for the "no forgetting" gate, scored by lm-eval tasks
in `evals/tasks/general/` (`acc` and `acc_norm`, chance 50% / 25% / 25%). Rows are
`{{"id", "query", "choices", "gold"}}`; `id` is `<task>-<row index in the source file>`.
Items per file (PIQA / ARC-Easy / HellaSwag): {counts["piqa"]} / {counts["arc_easy"]} /
{counts["hellaswag"]}, chosen and ordered by the sha256 of `<task>:<source index>`, so the
first N rows (`eval.general.limit`) are a deterministic random sample. Regenerate byte for
byte (needs `../shared/data`):

    python scripts/make_general_evals.py

| file | source (repository @ commit, path) | rows | licence |
| --- | --- | --- | --- |
{table}

The dataset licences are those of the dataset cards (listed in `../shared/data/SOURCES.md`);
all allow redistribution with attribution. The two repositories' licence texts are in
`general/licenses/`. These rows are evaluation data only: curation's contamination check
(`contamination.eval_files: [evals/data]`) keeps them out of training.
{END}"""


def upsert(existing: str, section: str) -> str:
    if BEGIN in existing and END in existing:
        head, _, rest = existing.partition(BEGIN)
        _, _, tail = rest.partition(END)
        return head + section + tail
    return existing.rstrip("\n") + "\n\n" + section + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a diff")
    args = parser.parse_args()

    files: dict[Path, str] = {}
    counts: dict[str, int] = {}
    for task, read in SOURCES.items():
        items = select(task, read(), N_ITEMS)
        counts[task] = len(items)
        files[OUT_DIR / f"{task}.jsonl"] = render(items)
    for repo in (FOUNDRY, KLOSAX):  # Apache-2.0 and MIT ask for their text to travel along
        files[OUT_DIR / "licenses" / f"{repo}.LICENSE"] = (SHARED / repo / "LICENSE").read_text()
    readme = REPO / README
    files[README] = upsert(readme.read_text() if readme.is_file() else "", readme_section(counts))

    differ = [p for p, text in files.items() if not (REPO / p).is_file()
              or (REPO / p).read_text() != text]  # fmt: skip
    if args.check:
        for p in differ:
            print(f"differs: {p}")
        return 1 if differ else 0
    for p, text in files.items():
        (REPO / p).parent.mkdir(parents=True, exist_ok=True)
        (REPO / p).write_text(text)
    print(f"wrote {', '.join(f'{t}: {n}' for t, n in counts.items())} items to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
