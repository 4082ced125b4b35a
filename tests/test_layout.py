"""The folder tree reads as the pipeline, and no import points up it.

tunegate/ has one package per stage, in pipeline order; a stage may use the stages before it
and the shared modules (config, chat, models, lineage, ...), never one after it. A new module
that breaks this fails here with the line to move.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.unit

STAGES = ["data", "curation", "review", "training", "evaluation", "release", "runs", "cli"]


def tunegate_imports(path: Path) -> list[tuple[int, str]]:
    """(line, first package under tunegate) of every `from tunegate.<x> import` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tunegate."):
            found.append((node.lineno, node.module.split(".")[1]))
    return found


def test_every_stage_package_exists_in_pipeline_order():
    packages = {p.name for p in (REPO / "tunegate").iterdir() if (p / "__init__.py").exists()}
    assert set(STAGES) <= packages, set(STAGES) - packages


def test_no_stage_imports_a_later_stage():
    upward = []
    for path in sorted((REPO / "tunegate").rglob("*.py")):
        own = path.relative_to(REPO / "tunegate").parts[0]
        if own not in STAGES:
            continue
        for line, target in tunegate_imports(path):
            if target in STAGES and STAGES.index(target) > STAGES.index(own):
                upward.append(f"{path.relative_to(REPO)}:{line} imports tunegate.{target}")
    assert not upward, "\n".join(upward)
