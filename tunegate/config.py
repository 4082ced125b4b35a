"""The one declarative config: a frozen pydantic model loaded from YAML.

Every setting of a pipeline run lives here, so a run is fully described by one file
and its canonical hash (recorded with every run in the lineage database).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
# The shipped lm-eval tasks: `eval.general.tasks` names one YAML of GENERAL_TASKS_DIR each.
EVALS_DIR = Path(__file__).resolve().parents[1] / "evals"
GENERAL_TASKS_DIR = EVALS_DIR / "tasks" / "general"


class Section(BaseModel):
    """Base of every config section: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


RowField = Literal[
    "instruction", "input", "output", "system", "history", "prompt", "completion",
    "messages", "role", "content", "conversations", "from", "value",
]  # fmt: skip


class SourceConfig(Section):
    path: str = Field(description="File or directory of raw rows, relative to the config file.")
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion"] = Field(
        "auto", description="Row format; `auto` detects it per file from the first valid row."
    )
    origin: Literal["human", "synthetic"] = Field(
        "human", description="Where the rows come from; a row's own `origin` field overrides it."
    )
    fields: dict[RowField, str] = Field(
        default_factory=dict,
        description="Canonical key -> this source's key, e.g. `{output: response}` for rows "
        "that keep the answer under `response` (self-instruct predictions).",
    )
    encoding: str = Field(
        "utf-8",
        description="Text encoding of JSON / JSONL / CSV files (e.g. `cp1252`); a row not valid "
        "in it is a `schema` rejection naming the byte offset, never decoded with U+FFFD.",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}") from None
        return value


class DataConfig(Section):
    sources: list[SourceConfig] = Field(min_length=1, description="Raw sources to curate.")
    min_accepted_rows: int = Field(
        50, ge=1, description="Fewer accepted rows than this blocks the run: nothing to learn from."
    )
    max_row_bytes: int = Field(
        1 << 20, ge=1024,
        description="A row larger than this (bytes of its line or CSV record; characters for "
        "JSON arrays and parsed Parquet rows) is rejected `too_long` without being held in "
        "memory: one hostile 50 MB line must not take the run's memory.",
    )  # fmt: skip


class DedupConfig(Section):
    exact: bool = Field(True, description="Reject exact duplicates (normalised text).")
    near: bool = Field(
        True, description="Reject near-duplicates: MinHash LSH candidates, exact Jaccard decides."
    )
    near_threshold: float = Field(
        0.8, gt=0.0, le=1.0,
        description="Word-shingle Jaccard of two whole conversations at or above which the "
        "later one is a near-duplicate.",
    )  # fmt: skip
    num_perm: int = Field(
        128, ge=8, le=1024,
        description="MinHash permutations; LSH bands x rows are derived from it and the threshold.",
    )  # fmt: skip
    shingle_size: int = Field(
        3, ge=1, le=16, description="Words per shingle (inside one message; shorter messages: one)."
    )
    duplicate_response: bool = Field(
        True, description="Reject a long answer a kept row already gave to a different prompt."
    )
    response_min_words: int = Field(
        8, ge=1,
        description="Answers shorter than this are never duplicate responses (`Yes` answers many).",
    )  # fmt: skip


class ContaminationConfig(Section):
    """Training rows must not overlap any eval set (held-out task and general suite)."""

    enabled: bool = Field(True, description="Reject rows that overlap an eval item.")
    eval_files: list[str] = Field(
        ["evals/data"],
        description="Eval files or directories (all their data files) to decontaminate against; "
        "`eval.heldout_path` is always included. Missing paths are skipped and reported.",
    )
    ngram: int = Field(
        13, ge=4, le=64, description="Shared word n-gram that marks overlap (13 as in GPT-3)."
    )
    min_words: int = Field(
        8, ge=1,
        description="Eval texts of min_words..ngram-1 words match when contained whole; shorter "
        "ones (labels, yes/no) never do.",
    )  # fmt: skip
    near_threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="A row holding this share of an eval item's word shingles is a near copy "
        "(edits every dozen words break every 13-gram but keep ~80% of 3-shingles).",
    )
    shingle_size: int = Field(3, ge=1, le=16, description="Words per shingle for near copies.")
    fields: list[str] | None = Field(
        None, description="Eval item fields to compare (default: every string field but the id)."
    )
    id_field: str = Field("id", description="Eval item field that names it in verdicts.")


class ContractsConfig(Section):
    """Declarative data contracts in `schemas/`, editable without Python."""

    record_schema: str = Field(
        "schemas/record_contract.yaml",
        description="pandera YAML schema every record must pass (relative to the config file; "
        "when absent there, to the tunegate checkout).",
    )
    batch_suite: str | None = Field(
        "schemas/curated_batch.json",
        description="Great Expectations suite over the curated batch; a failure blocks the run. "
        "null skips it.",
    )


class TemplateConfig(Section):
    """Chat-template gate: every row rendered and tokenized as the trainer will see it."""

    enabled: bool = Field(
        True, description="Check rows with the base model's tokenizer and chat template."
    )
    min_trained_tokens: int = Field(
        1, ge=1,
        description="Each assistant turn must train at least this many answer tokens "
        "(its end-of-turn token not counted).",
    )  # fmt: skip
    max_rejected_share: float = Field(
        0.1, ge=0.0, le=1.0,
        description="Template rejections above this share of the rows checked block the run: "
        "a wrong template or tokenizer, not bad rows.",
    )  # fmt: skip


REPETITION_TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}  # Gopher (Rae et al. 2021), table A1
REPETITION_DUP_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
SyntheticFlag = Literal[
    "refusal", "boilerplate", "repetition", "empty_answer", "too_short", "length_ratio",
    "repeated_answer", "non_alpha", "near_copy", "perplexity",
]  # fmt: skip


class SyntheticConfig(Section):
    """Automatic review of `origin: synthetic` rows: scores, thresholds, and what a flag does."""

    enabled: bool = Field(True, description="Score synthetic rows after the row checks.")
    reject_on: list[SyntheticFlag] = Field(
        ["refusal", "repetition", "empty_answer", "near_copy"],
        description="Flags that reject a row outright (`synthetic_rejected`).",
    )
    review_on: list[SyntheticFlag] = Field(
        ["boilerplate", "too_short", "length_ratio", "repeated_answer", "non_alpha", "perplexity"],
        description="Flags that send a row to human review (unless a reject flag is also set).",
    )
    refusal_patterns: list[str] = Field(
        [r"\bi(?:'m| am) sorry,? but\b",
         r"\bas an ai(?: language model| assistant)?,? i "
         r"(?:cannot|can't|can not|am not|do not|don't)",
         r"\bi (?:cannot|can't|can not|am unable to|'m unable to|am not able to|won't be able to|"
         r"must decline to) (?:help(?! but)|assist|provide|fulfill?|comply|access|classify|"
         r"answer|complete|do that|generate|create|write)\b"],
        description="Case-insensitive regular expressions that mark an answer as a refusal.",
    )  # fmt: skip
    boilerplate_phrases: list[str] = Field(
        ["as an ai", "as a language model", "as an assistant, i", "i hope this helps",
         "i don't have personal", "i do not have personal", "my knowledge cutoff",
         "openai", "chatgpt", "feel free to ask", "let me know if you have any other"],
        description="Case-insensitive phrases of AI boilerplate in an answer.",
    )  # fmt: skip
    min_answer_chars: int = Field(
        2, ge=0, description="Answers with fewer non-space characters are `too_short`."
    )
    placeholder_answers: list[str] = Field(
        ["n/a", "na", "none", "null", "...", "-", "todo", "tbd", "<nooutput>", "<noinput>"],
        description="Whole answers (case-insensitive) that say nothing: `empty_answer`.",
    )
    repeated_answer_min_words: int = Field(
        8, ge=1,
        description="The same answer of at least this many words in several synthetic rows "
        "(different prompts, one answer: a collapsed generator) sets `repeated_answer`.",
    )  # fmt: skip
    repetition_min_words: int = Field(
        50, ge=1,
        description="Repetition and `non_alpha` rules apply to answers of at least this many "
        "words (Gopher's document minimum; shorter texts are too noisy).",
    )  # fmt: skip
    min_alpha_word_fraction: float = Field(
        0.6, ge=0.0, le=1.0,
        description="Share of answer words holding a letter below this sets `non_alpha` "
        "(token garbage, symbol soup; Gopher uses 0.8 on web text, too strict for lists).",
    )  # fmt: skip
    max_duplicate_line_fraction: float = Field(
        0.3, ge=0.0, le=1.0, description="Share of lines that repeat an earlier line (Gopher)."
    )
    max_top_ngram_char_fraction: dict[int, float] = Field(
        REPETITION_TOP_NGRAMS,
        description="n → largest share of characters covered by the most frequent word n-gram.",
    )
    max_duplicate_ngram_char_fraction: dict[int, float] = Field(
        REPETITION_DUP_NGRAMS,
        description="n → largest share of characters inside repeated word n-grams.",
    )
    length_ratio_range: tuple[float, float] = Field(
        (0.01, 100.0),
        description="Answer words / prompt words outside [low, high] sets `length_ratio`.",
    )
    near_copy_threshold: float = Field(
        0.8, ge=0.0, le=1.0,
        description="Word 3-gram Jaccard with a human row at or above this sets `near_copy`.",
    )  # fmt: skip
    perplexity: bool = Field(
        False, description="Score answers by perplexity under the base model (CPU, batched)."
    )
    max_perplexity: float = Field(
        200.0, gt=1.0, description="Answer perplexity above this sets `perplexity`."
    )
    perplexity_batch_size: int = Field(8, ge=1, description="Rows per perplexity batch.")
    perplexity_max_tokens: int = Field(
        512, ge=16, description="Score at most this many tokens of a row (bounds CPU time)."
    )

    @field_validator("refusal_patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return v

    @field_validator("length_ratio_range")
    @classmethod
    def _low_le_high(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] <= v[1]:
            raise ValueError("expected [low, high] with 0 <= low <= high")
        return v


class ReviewConfig(Section):
    """Human review of synthetic rows flagged for it; the queue lives in the lineage DB."""

    wait: bool = Field(
        False,
        description="Pause the pipeline flow while rows are pending (resume in the Prefect UI, "
        "or automatically once every row is decided). Off: the run goes on unattended and "
        "pending rows stay rejected as `review_pending`.",
    )
    timeout_s: int = Field(3600, ge=1, description="Longest pause in seconds.")
    on_timeout: Literal["reject_pending", "fail"] = Field(
        "reject_pending",
        description="Rows still pending when the pause ends: leave them rejected "
        "(`review_pending`) and train without them, or fail the run.",
    )
    poll_interval_s: int = Field(
        10, ge=1, description="Seconds between checks for a resume or a finished queue."
    )
    auto_resume: bool = Field(
        True, description="Resume the paused flow by itself once no row is pending."
    )
    reuse_decisions: bool = Field(
        True, description="A row a reviewer decided before (same record id) gets that decision."
    )


class ModelConfig(Section):
    base_model: str = Field(
        EMBEDDED_MODEL,
        description="`embedded:smollm2-135m-instruct`, a local HF model directory, a `.gguf` "
        "file (de-quantized once into the workspace) or a hub id in the local cache.",
    )
    chat_template: str | None = Field(
        None,
        description="Chat template to train and evaluate with: a shipped name (chatml, llama3, "
        "qwen2.5, qwen3, gemma, gemma3, mistral, mistral_v1, mistral_tekken, phi3, phi4) or a "
        "path to a `.jinja` file; null: the base model's own. Saved with the adapter.",
    )
    end_of_turn: str | None = Field(
        None,
        description="The token(s) ending an assistant turn; null: found by rendering the "
        "template (the special token written after an answer), not taken from eos_token.",
    )
    system_role: Literal["keep", "fold_into_first_user", "reject"] = Field(
        "keep",
        description="System turns: pass to the template as they are; fold into the first user "
        "message (for templates that refuse a system role, e.g. Gemma's); or reject such rows "
        "(`template`).",
    )
    add_missing_tokens: bool = Field(
        False,
        description="Add the chat template's turn markers the tokenizer lacks (ChatML's "
        "<|im_start|>/<|im_end|> given to a Llama 3 base) as special tokens, and train their "
        "embedding and LM-head rows with the adapter, as well as the rows of template markers the "
        "base never trained (Llama 3 base's <|eot_id|>). Off: such a template is refused.",
    )

    @field_validator("chat_template")
    @classmethod
    def _known_template(cls, v: str | None) -> str | None:
        from tunegate.chat import SHIPPED_TEMPLATES

        if v is None or v in SHIPPED_TEMPLATES or v.endswith(".jinja"):
            return v
        raise ValueError(
            f"unknown chat template {v!r}: expected one of {', '.join(SHIPPED_TEMPLATES)} or a "
            "path to a .jinja file"
        )


class LoraConfig(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Dropout on the LoRA input (0.05 costs ~0.7 GB more peak memory on CPU).",
    )  # fmt: skip
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters; `all-linear` as in QLoRA."
    )
    use_rslora: bool = Field(
        False,
        description="Rank-stabilized LoRA: scale by alpha / sqrt(r) instead of alpha / r, so a "
        "higher rank still learns at the same pace.",
    )
    use_dora: bool = Field(
        False,
        description="DoRA: learn a magnitude per output and a LoRA direction; slower per step "
        "(the base weight's norm is recomputed, NF4 weights unpacked for it).",
    )


class TrainConfig(Section):
    quantization: Literal["nf4", "none"] = Field(
        "nf4", description="Base weights in NF4 with double quantization (QLoRA), or full."
    )
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="dtype the matmuls run in; `auto`: bf16 on GPUs that have it and on CPUs "
        "with native bf16 (AVX512-BF16 / AMX), else fp32 (faster there, measured). A dtype the "
        "device cannot run well (fp16 on CPU, bf16 on a CPU without it) is refused.",
    )
    learning_rate: float = Field(1e-3, ge=0.0, description="Peak learning rate.")
    max_steps: int = Field(40, ge=1, description="Optimizer steps.")
    batch_size: int = Field(4, ge=1, description="Rows per micro-batch, per process.")
    gradient_accumulation_steps: int = Field(
        2, ge=1,
        description="Micro-batches per optimizer step: rows per step = batch_size x this x "
        "processes. The loss is averaged over all label tokens of the step.",
    )  # fmt: skip
    padding_free: bool = Field(
        True,
        description="Concatenate each micro-batch's rows into one sequence with restarting "
        "position ids: no padding, and the attention mask built from the position ids keeps "
        "rows from attending to each other. false: pad each micro-batch to its longest row.",
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Recompute activations in the backward pass to save memory; `auto`: on GPUs "
        "only (on CPU small micro-batches bound memory without the recompute).",
    )
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Share of steps warming up.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    max_seq_length: int = Field(512, ge=16, description="Longest rendered row in tokens.")
    seed: int = Field(
        42, description="Seed for data order, validation split, LoRA init and dropout."
    )
    logging_steps: int = Field(5, ge=1, description="Steps between loss records.")
    validation_fraction: float = Field(
        0.05, ge=0.0, lt=1.0,
        description="Share of snapshot rows held out (seeded) for the eval loss; 0: no eval loss.",
    )  # fmt: skip
    eval_steps: int = Field(10, ge=1, description="Steps between eval-loss measurements.")
    checkpoint_steps: int = Field(
        10, ge=0,
        description="Steps between checkpoints in `<workspace>/checkpoints/<job>/`; 0: none. "
        "Deleted once the adapter is saved.",
    )  # fmt: skip
    resume: bool = Field(
        True,
        description="Resume from the last complete checkpoint of the same job (config, base "
        "weights, snapshot and process count), e.g. after a killed run.",
    )


def available_general_tasks() -> list[str]:
    """Names `eval.general.tasks` may hold: one per `evals/tasks/general/<name>.yaml`, the
    definition the eval runs (its data is `evals/data/general/<name>.jsonl`). Read from the
    folder, not from the evaluation package, so loading a config stays light."""
    return sorted(p.stem for p in GENERAL_TASKS_DIR.glob("*.yaml"))


def known_general_task(name: str) -> str:
    """`name` if `evals/tasks/general/<name>.yaml` exists (the file the eval runs), else an
    error naming the value and the tasks there are (the key path is added by `parse_config`):
    a new general task is a new YAML there, not a change here."""
    available = available_general_tasks()
    if name not in available:
        raise ValueError(
            f"unknown general eval task {name!r}; the tasks of evals/tasks/general/ are "
            f"{', '.join(available)}"
        )
    return name


class SequentialConfig(Section):
    """Sequential evaluation of the adapter on the general suite (README "Evaluation and gates").

    Base and adapter answer the items chunk by chunk; after each chunk the task's
    no-forgetting gate is read with a group-sequential bound (Lan-DeMets alpha spending,
    `tunegate/evaluation/sequential.py`) and the task stops as soon as it is conclusive. The
    base answers only the items its cached scores lack; its cache grows run by run.
    """

    enabled: bool = Field(
        True,
        description="Evaluate base and adapter in chunks and stop a task once its gate is pass "
        "or fail; false: every item, one fixed-size bootstrap test (the chunk >= the task's size "
        "does the same).",
    )
    chunk: int = Field(
        100, ge=10, description="Items per look: the gate is read at chunk, 2 x chunk, ... items "
        "and at the full size (eval.general.limit).",
    )  # fmt: skip
    spending: Literal["obrien_fleming", "pocock"] = Field(
        "obrien_fleming",
        description="Alpha-spending function: O'Brien-Fleming-type keeps the last look close to "
        "the fixed-size test; Pocock-type stops earlier and widens the last look.",
    )


class GeneralEvalConfig(Section):
    """General-capability suite: lm-eval log-likelihood multiple choice on shipped files."""

    tasks: list[str] = Field(
        ["piqa", "arc_easy", "hellaswag"],
        description="Tasks of `evals/tasks/general/` to run on base and adapter; [] skips the "
        "suite (and its gates).",
    )
    limit: int | None = Field(
        120, ge=1,
        description="First N items per task (the files hold 500 each, in a fixed random order); "
        "null: all. Bounds the run time: N x (2 + 4 + 4) log-likelihood requests per subject, "
        "~1.1 s per N on 2 CPU cores for the embedded model. `tunegate validate` refuses an N "
        "too small for the general gate to be conclusive and says the N needed.",
    )  # fmt: skip
    batch_size: int = Field(16, ge=1, description="Log-likelihood requests per forward pass.")
    backend: Literal["lm_eval", "shared_prefix"] = Field(
        "lm_eval",
        description="What computes the choices' log-likelihoods. lm_eval: lm-eval's HF backend, "
        "one sequence per (context, choice). shared_prefix: one forward pass per context, its "
        "choices packed behind it (`tunegate/evaluation/shared_prefix.py`); the same prompts, "
        "tokens and metrics, equal to lm_eval within float rounding (bench/eval.py "
        "--compare-backends). Part of the base scores' cache key.",
    )
    sequential: SequentialConfig = SequentialConfig()

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        return [known_general_task(name) for name in v]


class EvalConfig(Section):
    heldout_path: str = Field(
        "evals/data/heldout.jsonl", description="Held-out set of the project's own task."
    )
    max_items: int | None = Field(None, ge=1, description="Evaluate only the first N items.")
    max_new_tokens: int = Field(48, ge=1, description="Generation budget per held-out item.")
    batch_size: int = Field(32, ge=1, description="Items per generation batch.")
    general: GeneralEvalConfig = GeneralEvalConfig()
    compute_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="dtype base and adapter are both evaluated in (always the same for both); "
        "`auto` follows train.compute_dtype's rule: bf16 on CUDA and on CPUs with native bf16, "
        "else fp32. Part of the base scores' cache key.",
    )
    cache_base: bool = Field(
        True,
        description="Reuse the base model's scores from an earlier run when nothing they depend "
        "on changed (base files, task files and data, settings, device, library versions).",
    )


class GeneralGateConfig(Section):
    """No forgetting: per task, the adapter may not fall clearly below the base model."""

    metric: Literal["p_gold", "acc", "acc_norm"] = Field(
        "p_gold",
        description="Per-item metric compared. p_gold: probability of the gold choice, "
        "normalised over the choices (continuous: a small change moves it, so few items "
        "decide); acc / acc_norm: 0/1 per item (length-normalised for acc_norm).",
    )
    max_drop: float = Field(
        0.02, ge=0.0, le=1.0,
        description="Non-inferiority margin: the largest tolerated drop below the base model "
        "(0.02 = 2 points). pass: the paired-bootstrap lower confidence bound of adapter minus "
        "base is above -max_drop; fail: the upper bound is below it; else inconclusive.",
    )  # fmt: skip
    max_drop_per_task: dict[str, float] = Field(
        default_factory=dict, description="Per-task overrides of `max_drop`, e.g. {piqa: 0.05}."
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="One-sided confidence of the bound the gate reads."
    )
    bootstrap_iters: int = Field(
        2000, ge=100, description="Paired bootstrap resamples of the items (seeded: repeatable)."
    )

    @field_validator("max_drop_per_task")
    @classmethod
    def _known_task_keys(cls, v: dict[str, float]) -> dict[str, float]:
        for name in v:
            known_general_task(name)
        return v

    def drop_limit(self, task: str) -> float:
        """The tolerated drop for one task (its override, else `max_drop`)."""
        return self.max_drop_per_task.get(task, self.max_drop)


class GateConfig(Section):
    metric: str = Field("field_accuracy", description="Held-out metric the gain gate reads.")
    min_heldout_gain: float = Field(
        0.2,
        description="Adapter minus base on the held-out metric must reach this: pass when the "
        "paired lower confidence bound of the per-item gain does, fail when even the upper "
        "bound is below it, else inconclusive.",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="One-sided confidence of the held-out gain bounds."
    )
    bootstrap_iters: int = Field(
        2000, ge=100, description="Paired bootstrap resamples of the held-out items (seeded)."
    )
    general: GeneralGateConfig = GeneralGateConfig()


class PromoteConfig(Section):
    alias: str = Field("production", description="Registry alias a passing adapter gets.")
    accept_inconclusive: list[str] = Field(
        default_factory=list,
        description="Aliases that take an adapter whose gates are pass or inconclusive (never "
        "fail), e.g. [staging]; every other alias needs pass on every gate. The accepted "
        "inconclusive gates are recorded with the promotion.",
    )


class PipelineConfig(Section):
    name: str = Field("tunegate", description="Pipeline name, shown in reports and Prefect.")
    workspace: str = Field(
        ".tunegate", description="Where lineage, models, snapshots and adapters live."
    )
    data: DataConfig
    dedup: DedupConfig = DedupConfig()
    contamination: ContaminationConfig = ContaminationConfig()
    contracts: ContractsConfig = ContractsConfig()
    template: TemplateConfig = TemplateConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    review: ReviewConfig = ReviewConfig()
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


def check_runnable(config: PipelineConfig, device: str, source: str = "<config>") -> None:
    """Refuse settings that parse but cannot run on this machine's device.

    Separate from parsing: the same file is valid on a GPU or a CPU with native bf16 and not
    on an AVX2-only CPU, so commands that run models check it against the device they run on.
    """
    from tunegate.precision import dtype_problem

    settings = {"train.compute_dtype": config.train.compute_dtype,
                "eval.compute_dtype": config.eval.compute_dtype}  # fmt: skip
    problems = [
        (key, f"{why} (device: {device})")
        for key, value in settings.items()
        if (why := dtype_problem(value, device))
    ]
    if problems:
        raise ConfigError(source, problems)


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
