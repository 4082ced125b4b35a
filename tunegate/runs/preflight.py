"""What a run checks before it starts, and how a run that could not start is still recorded.

A nightly deployment fails on a bad config or a moved source file long before any model
loads; without a lineage row that night would be visible in Prefect only. So a config that
does not load is recorded as a `failed` run in the workspace the YAML names (or the
default one), and sources are checked for existence and readability up front.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunegate.config import ConfigError, PipelineConfig
from tunegate.data.ingest import source_files
from tunegate.lineage import Lineage

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = ".tunegate"  # PipelineConfig.workspace's default


def check_sources(config: PipelineConfig, config_path: str | Path) -> None:
    """Every source exists and each of its data files can be read; else ConfigError.

    Each problem names the source's key path and its resolved file path, so a night that
    fails here says which file moved or lost its permissions.
    """
    problems: list[tuple[str, str]] = []
    for i, source in enumerate(config.data.sources):
        key, path = f"data.sources.{i}.path", config.resolve(source.path)
        try:
            files = source_files(path)
        except OSError as exc:
            problems.append((key, str(exc)))
            continue
        for file in files:
            try:
                with file.open("rb") as f:
                    f.read(1)
            except OSError as exc:
                problems.append((key, f"{file}: not readable ({exc.strerror or exc})"))
    if problems:
        raise ConfigError(str(config_path), problems)


def failed_start_workspace(config_path: str | Path) -> Path:
    """Where a run whose config does not load is recorded.

    The YAML's own `workspace` (relative to the YAML's folder, as when it loads) when the
    file parses far enough to name one; otherwise `.tunegate` in the working directory,
    which for a deployment is the checkout the worker runs in (`TUNEGATE_HOME`).
    """
    path = Path(config_path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        data = None
    workspace = data.get("workspace") if isinstance(data, dict) else None
    if isinstance(workspace, str) and workspace:
        ws = Path(workspace)
        return ws if ws.is_absolute() else (path.resolve().parent / ws).resolve()
    return Path.cwd() / DEFAULT_WORKSPACE


@dataclass(frozen=True)
class FailedStart:
    """The lineage row of a run that could not start."""

    run_id: str
    detail: str
    lineage: str  # the lineage file it was recorded in


def record_failed_start(
    flow: str, config_path: str | Path, error: BaseException
) -> FailedStart | None:
    """Record a run that failed before it started: status `failed`, the error as its detail.

    Returns what was recorded, or None when the workspace's lineage cannot be opened either
    (the original error is what the caller raises; this one is logged).
    """
    ws = failed_start_workspace(config_path)
    try:
        raw = Path(config_path).read_text(errors="replace")
    except OSError:
        raw = ""
    try:
        lineage = Lineage(ws / "lineage.duckdb")
        run_id = lineage.start_run(flow, "", raw)
        detail = f"{type(error).__name__}: {error}"
        lineage.end_run(run_id, "failed", detail)
    except Exception as exc:  # any: the caller raises the original error, which matters more
        log.warning("could not record the failed start in %s: %s", ws, exc)
        return None
    return FailedStart(run_id, detail, lineage.path)
