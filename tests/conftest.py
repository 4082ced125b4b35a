"""Shared fixtures: configs on temporary data, the embedded model and its tokenizer, tiny
models, free ports, Prefect's temporary server; and the test tiers.

Tiers (registered in pyproject.toml; README, "Development"): every test has exactly one of
`unit`, `integration`, `e2e`. A file declares its tier once, `pytestmark = pytest.mark.unit`;
a test (or one parameter, `pytest.param(..., marks=...)`) overrides it with its own tier
mark. `pytest_collection_modifyitems` below resolves the closest tier onto each test, so
`-m unit` sees exactly one, and stops the run when a test has none or two, or is `slow` and
`unit`; `make test-fast` runs the `unit` tier.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunegate.config import PipelineConfig, parse_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
# tests/ mirrors tunegate/, and a few test modules share helpers across those folders
# (`from test_train import write_snapshot_file` in tests/release/test_export.py): every folder
# is importable by module name, as pytest makes a test file's own folder, so a file collected
# alone finds them too. Test module names are unique across the folders.
sys.path[:0] = [str(d) for d in sorted(Path(__file__).parent.iterdir())
                if d.is_dir() and not d.name.startswith(("_", "."))]  # fmt: skip


TIERS = ("unit", "integration", "e2e")


def _tier_marks(node: pytest.Item | pytest.Collector) -> list[pytest.Mark]:
    return [m for m in node.own_markers if m.name in TIERS]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: it must see the resolved tier
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each test its closest tier mark (its own, else its class's, else its file's).

    Errors name every test with no tier, two tiers at one level, or `slow` on a `unit` test.
    """
    chosen: dict[pytest.Item, str] = {}
    problems: list[str] = []
    for item in items:
        levels = [_tier_marks(node) for node in reversed(item.listchain())]
        marks = next((found for found in levels if found), [])
        names = sorted({m.name for m in marks})
        if len(names) != 1:
            problems.append(f"{item.nodeid}: tiers {names or 'none'}; give it exactly one")
        elif names == ["unit"] and item.get_closest_marker("slow"):
            problems.append(f"{item.nodeid}: `slow` but `unit`; slow tests are integration or e2e")
        else:
            chosen[item] = names[0]
    if problems:
        raise pytest.UsageError("test tiers (tests/conftest.py):\n" + "\n".join(problems))
    for node in {n for item in items for n in item.listchain()[:-1]}:  # files, classes
        node.own_markers[:] = [m for m in node.own_markers if m.name not in TIERS]
    for item, tier in chosen.items():
        item.own_markers[:] = [m for m in item.own_markers if m.name not in TIERS]
        item.add_marker(tier)


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> str:
    """`tiers: unit N, integration N, e2e N` under the collected (or selected) tests."""
    counts = {t: sum(1 for i in items if i.get_closest_marker(t)) for t in TIERS}
    return "tiers: " + ", ".join(f"{t} {n}" for t, n in counts.items())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def make_config(
    tmp_path: Path, sources: list[dict[str, str]], **overrides: object
) -> PipelineConfig:
    """A config rooted at tmp_path (relative source paths resolve there)."""
    data: dict[str, object] = {
        "workspace": str(tmp_path / "ws"),
        "data": {"sources": sources, "min_accepted_rows": 1},
    }
    data.update(overrides)
    return parse_config(data, root=tmp_path)


def assert_conserved(lineage: Any, run_id: str, n_input: int) -> dict[str, int]:
    """Input rows = accepted + rejected: one verdict per input row, each of the two statuses.

    `n_input` is what the test wrote, counted independently of tunegate. Returns the
    run's rows per reason (and `accepted`).
    """
    (row,) = lineage.query(
        "SELECT count(*) AS n, count(DISTINCT (source, source_row)) AS rows_judged, "
        "count(*) FILTER (status = 'accepted') AS accepted, "
        "count(*) FILTER (status = 'rejected' AND reason IS NOT NULL) AS rejected "
        "FROM row_verdicts WHERE run_id = ?",
        [run_id],
    )
    assert row["n"] == row["rows_judged"] == n_input, (row, n_input)
    assert row["accepted"] + row["rejected"] == n_input, row
    read = lineage.query("SELECT sum(n_rows) AS n FROM sources WHERE run_id = ?", [run_id])
    assert read[0]["n"] == n_input, (read, n_input)  # rows ingest read from the files
    return lineage.verdict_counts(run_id)


@pytest.fixture(scope="session")
def embedded_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded SmolLM2 de-quantized once per test session (~20 s)."""
    from tunegate.config import EMBEDDED_MODEL
    from tunegate.models import resolve_base_model

    cache = Path(os.environ.get("TUNEGATE_TEST_CACHE", REPO / ".tunegate" / "test-cache"))
    return resolve_base_model(EMBEDDED_MODEL, cache).path


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir: Path) -> Any:
    """The embedded SmolLM2's tokenizer and chat template, loaded once (the tiny model's too).

    Shared by the session: a test that needs a changed tokenizer changes a copy.
    """
    from tunegate.chat import load_tokenizer

    return load_tokenizer(embedded_model_dir)


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    """Prefect's temporary server (`prefect_test_harness`) for the flows run in one test file.

    In-process only; a real `prefect server start` for deployments is `tests/prefect_server.py`.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# --- train fixtures (tests/training/test_train.py; shared: a tiny model any stage can train) ---


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any):
    """A 2-layer, randomly initialised Llama with the real SmolLM2 tokenizer and chat template.

    Same tokenizer, template and architecture as the embedded model, ~3 M parameters: the
    training and loading code paths run for real in seconds.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunegate.models import BaseModel, sha256_dir

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # init zeroes the pad row; SmolLM2 pads with <|im_end|>, a trained token
        model.get_input_embeddings().weight[tokenizer.pad_token_id].normal_(0.0, 0.02)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return BaseModel(ref=str(path), path=path, sha256=sha256_dir(path))


@pytest.fixture(params=["off", "on"], ids=["no-native-bf16", "native-bf16"])
def cpu_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test as on a CPU without native bf16 (`auto` -> fp32) and as on one with it.

    No job chooses its CPU, so both paths run everywhere: `on` computes bf16 emulated where
    the CPU lacks it (correct, slower), which the tiny models afford.
    """
    from tunegate.precision import ENV_CPU_BF16

    monkeypatch.setenv(ENV_CPU_BF16, request.param)
    return request.param


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls: one thread is fastest, and immune to other jobs holding the other core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- end train fixtures ---
