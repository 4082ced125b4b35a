"""The one declarative config: a frozen pydantic model loaded from YAML.

Every setting of a pipeline run lives here, so a run is fully described by one file
and its canonical hash (recorded with every run in the lineage database).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class Section(BaseModel):
    """Base of every config section: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceConfig(Section):
    path: str = Field(description="File or directory of raw rows, relative to the config file.")
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion"] = Field(
        "auto", description="Row format; `auto` detects it per file from the first valid row."
    )
    origin: Literal["human", "synthetic"] = Field(
        "human", description="Where the rows come from; a row's own `origin` field overrides it."
    )


class DataConfig(Section):
    sources: list[SourceConfig] = Field(min_length=1, description="Raw sources to curate.")
    min_accepted_rows: int = Field(
        50, ge=1, description="Fewer accepted rows than this blocks the run: nothing to learn from."
    )


class DedupConfig(Section):
    exact: bool = Field(True, description="Reject exact duplicates (normalised text).")


class ModelConfig(Section):
    base_model: str = Field(
        EMBEDDED_MODEL,
        description="`embedded:smollm2-135m-instruct`, a local HF model directory or a hub id.",
    )


class LoraConfig(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters; `all-linear` as in QLoRA."
    )


class TrainConfig(Section):
    quantization: Literal["nf4", "none"] = Field(
        "nf4", description="Base weights in NF4 with double quantization (QLoRA), or full."
    )
    learning_rate: float = Field(1e-3, ge=0.0, description="Peak learning rate.")
    max_steps: int = Field(40, ge=1, description="Optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Rows per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per step.")
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Share of steps warming up.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    max_seq_length: int = Field(512, ge=16, description="Longest rendered row in tokens.")
    seed: int = Field(42, description="Seed for data order, LoRA init and dropout.")
    logging_steps: int = Field(5, ge=1, description="Steps between loss records.")


class EvalConfig(Section):
    heldout_path: str = Field(
        "evals/data/heldout.jsonl", description="Held-out set of the project's own task."
    )
    max_items: int | None = Field(None, ge=1, description="Evaluate only the first N items.")
    max_new_tokens: int = Field(48, ge=1, description="Generation budget per held-out item.")
    batch_size: int = Field(16, ge=1, description="Items per generation batch.")


class GateConfig(Section):
    metric: str = Field("field_accuracy", description="Held-out metric the gain gate reads.")
    min_heldout_gain: float = Field(
        0.2, description="Adapter minus base on the held-out metric must reach this."
    )


class PromoteConfig(Section):
    alias: str = Field("production", description="Registry alias a passing adapter gets.")


class PipelineConfig(Section):
    name: str = Field("tunegate", description="Pipeline name, shown in reports and Prefect.")
    workspace: str = Field(
        ".tunegate", description="Where lineage, models, snapshots and adapters live."
    )
    data: DataConfig
    dedup: DedupConfig = DedupConfig()
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    gates: GateConfig = GateConfig()
    promote: PromoteConfig = PromoteConfig()

    # Folder of the YAML file: relative paths in it resolve against it, as users expect.
    _root: Path = PrivateAttr(default_factory=Path.cwd)

    def resolve(self, path: str) -> Path:
        """Resolve a config path relative to the config file's folder."""
        p = Path(path)
        return p if p.is_absolute() else (self._root / p).resolve()

    @property
    def workspace_dir(self) -> Path:
        return self.resolve(self.workspace)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON form: same settings, same hash, whatever the YAML layout."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ConfigError(ValueError):
    """A config that does not load; `problems` lists (key path, reason) pairs."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {loc}: {msg}" for loc, msg in problems)
        super().__init__(f"{path}: {len(problems)} problem(s)\n{lines}")


def parse_config(
    data: object, *, source: str = "<config>", root: Path | None = None
) -> PipelineConfig:
    """Validate a parsed YAML document, collecting every problem with its key path."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("<root>", "expected a mapping of settings")])
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            (".".join(str(p) for p in err["loc"]) or "<root>", err["msg"]) for err in exc.errors()
        ]
        raise ConfigError(source, problems) from None
    if root is not None:
        config._root = root
    return config


def load_config(path: str | Path) -> PipelineConfig:
    """Load and validate a pipeline YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [("<file>", "no such file")])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [("<yaml>", str(exc))]) from None
    return parse_config(data, source=str(path), root=path.resolve().parent)
