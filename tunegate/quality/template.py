"""The chat-template gate: each row rendered and tokenized exactly as training will see it.

Most silent fine-tuning failures live in the chat template: training on the wrong tokens,
a stop token never learned, prompts cut off, control tokens smuggled into content, or an
inference prompt that differs from the training text. Each check below tests one of these
with the base model's own tokenizer and template, and rejects under its own reason code:

| check | reason | property |
| --- | --- | --- |
| `ControlTokens` | `template` | no special/control token of the tokenizer in any content |
| `TemplateRenders` | `template` | the chat template renders the row without error |
| `SequenceLength` | `too_long` | tokens ≤ `train.max_seq_length` (never truncated) |
| `SingleBos` | `double_bos` | one BOS at most, also when the rendered text is re-tokenized |
| `TemplateParity` | `template_parity` | each generation prompt is a token prefix of the row |
| `StopTokenTrained` | `stop_untrained` | each assistant turn's EOS token is a trained label |
| `AssistantTokensTrained` | `loss_mask` | each assistant turn trains ≥ N answer tokens |

The loss mask is the trainer's own (`tunegate.train.tokenize_chat`), so what is checked here
is what trains. Run level: `template_gate` blocks a run whose rejected share is too high.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from tunegate.config import PipelineConfig, TemplateConfig
from tunegate.lineage import Verdict
from tunegate.records import Record
from tunegate.train import TrainError, render_ids, tokenize_chat

if TYPE_CHECKING:
    from rich.text import Text
    from transformers import PreTrainedTokenizerBase

    from tunegate.quality.checks import RowCheck

TEMPLATE_REASONS = (
    "template", "too_long", "double_bos", "template_parity", "stop_untrained", "loss_mask",
)  # fmt: skip


class TemplateGateError(RuntimeError):
    """Too many rows fail the template checks: the template or tokenizer is wrong, not the rows."""


def load_tokenizer(model_dir: Path | str) -> PreTrainedTokenizerBase:
    """Only the tokenizer of a model directory (fast: no weights are read)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def content_tokens(tokenizer: PreTrainedTokenizerBase) -> Callable[[Sequence[Record]], list[int]]:
    """Tokens of each record's message contents (no template): the report's length unit."""

    def count(records: Sequence[Record]) -> list[int]:
        texts = ["\n".join(c for _, c in r.messages) for r in records]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(row) for row in ids]

    return count


def control_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Strings content must never hold: special tokens, and added tokens the template uses."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    tokens = set(tokenizer.all_special_tokens)
    for added in tokenizer.added_tokens_decoder.values():
        if added.special or added.content in template:
            tokens.add(added.content)
    return sorted((t for t in tokens if t), key=len, reverse=True)


@dataclass(frozen=True)
class TurnSpan:
    """One assistant turn in the rendered row: tokens [start, stop) and the trainer's labels."""

    message: int
    start: int
    stop: int
    trained: int
    eos_trained: bool


class Analysis:
    """Everything the checks need about one record, computed lazily and at most once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, record: Record):
        self.tokenizer = tokenizer
        self.messages = record.as_messages()

    @cached_property
    def rendered(self) -> tuple[list[int] | None, str | None]:
        """(token ids, None) or (None, why the template failed)."""
        try:
            return render_ids(self.tokenizer, self.messages), None
        except Exception as exc:  # jinja raise_exception, undefined keys, bad types: all `template`
            return None, f"{type(exc).__name__}: {exc}"

    @property
    def ids(self) -> list[int]:
        ids, error = self.rendered
        if ids is None:
            raise TrainError(f"chat template fails: {error}")
        return ids

    @cached_property
    def text(self) -> str:
        return str(
            self.tokenizer.apply_chat_template(self.messages, tokenize=False, return_dict=False)
        )

    @cached_property
    def mask(self) -> tuple[list[int] | None, str | None]:
        """The trainer's assistant mask, or why the trainer cannot build one for this row."""
        try:
            chat = tokenize_chat(self.tokenizer, self.messages)
        except TrainError as exc:
            return None, str(exc)
        return chat.assistant_mask, None

    @cached_property
    def prompt_mismatch(self) -> str | None:
        """The first assistant turn whose generation prompt is not a prefix of the row."""
        full = self.ids
        for i, message in enumerate(self.messages):
            if message["role"] != "assistant":
                continue
            prompt = render_ids(self.tokenizer, self.messages[:i], add_generation_prompt=True)
            if full[: len(prompt)] != prompt:
                at = _first_difference(prompt, full)
                return (
                    f"message {i}: the generation prompt (add_generation_prompt=True, what "
                    f"inference feeds) differs from the training rendering at token {at}: "
                    f"{self._show(prompt, at)} vs {self._show(full, at)}"
                )
            upto = render_ids(self.tokenizer, self.messages[: i + 1])
            if full[: len(upto)] != upto:
                at = _first_difference(upto, full)
                return f"message {i}: renders differently alone than in context at token {at}"
        return None

    @cached_property
    def turns(self) -> list[TurnSpan]:
        """Each assistant turn's token span with the trainer's labels counted in it."""
        mask, _ = self.mask
        if mask is None:
            return []
        eos = self.tokenizer.eos_token_id
        spans = []
        for i, message in enumerate(self.messages):
            if message["role"] != "assistant":
                continue
            start = len(render_ids(self.tokenizer, self.messages[:i], add_generation_prompt=True))
            stop = len(render_ids(self.tokenizer, self.messages[: i + 1]))
            labels = [t for t, m in zip(self.ids[start:stop], mask[start:stop], strict=True) if m]
            spans.append(TurnSpan(i, start, stop, sum(t != eos for t in labels), eos in labels))
        return spans

    def _show(self, ids: list[int], at: int) -> str:
        return repr(self.tokenizer.decode(ids[at : at + 4])) if at < len(ids) else "<end>"


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    same = (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return next(same, min(len(a), len(b)))


class TemplateProbe:
    """Shares one `Analysis` per row between the checks and counts the rows it saw."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.n_checked = 0
        self._key: tuple[str, int, str] | None = None
        self._analysis: Analysis | None = None

    def analyze(self, record: Record) -> Analysis:
        key = (record.source, record.source_row, record.record_id)
        if key != self._key or self._analysis is None:
            self._key, self._analysis = key, Analysis(self.tokenizer, record)
            self.n_checked += 1
        return self._analysis


class _TemplateCheck:
    """Base of the template checks: stateless, so `accept` has nothing to remember."""

    reason = "template"
    stage = "template"  # the funnel's row for this check (two checks share `template`)

    def __init__(self, probe: TemplateProbe):
        self.probe = probe

    def accept(self, record: Record) -> None:
        pass


class ControlTokens(_TemplateCheck):
    """Content holding `<|im_end|>` and the like would forge turn boundaries in training."""

    stage = "control_tokens"

    def __init__(self, probe: TemplateProbe):
        super().__init__(probe)
        self.tokens = control_tokens(probe.tokenizer)

    def __call__(self, record: Record) -> str | None:
        self.probe.analyze(record)  # every row the template stage sees is counted here
        for i, (role, content) in enumerate(record.messages):
            found = [t for t in self.tokens if t in content]
            if found:
                return f"messages[{i}].content ({role}) holds control token(s) {', '.join(found)}"
        return None


class TemplateRenders(_TemplateCheck):
    """The base model's chat template renders the row (it may raise, e.g. on a system turn)."""

    stage = "template_render"

    def __call__(self, record: Record) -> str | None:
        _, error = self.probe.analyze(record).rendered
        return None if error is None else f"chat template fails: {error}"


class SequenceLength(_TemplateCheck):
    """Rows longer than max_seq_length are rejected, never truncated (a cut row loses its stop)."""

    stage = "too_long"

    reason = "too_long"

    def __init__(self, probe: TemplateProbe, max_length: int):
        super().__init__(probe)
        self.max_length = max_length

    def __call__(self, record: Record) -> str | None:
        ids, _ = self.probe.analyze(record).rendered
        if ids is None or len(ids) <= self.max_length:
            return None
        return f"{len(ids)} tokens > train.max_seq_length {self.max_length}"


class SingleBos(_TemplateCheck):
    """At most one BOS at the start, as rendered and as re-tokenized from the rendered text.

    The second half catches a template that writes `bos_token` for a tokenizer that also adds
    one: anything that tokenizes the rendered text (TRL's text path, most inference servers)
    then sees two.
    """

    stage = "double_bos"

    reason = "double_bos"

    def __call__(self, record: Record) -> str | None:
        bos = self.probe.tokenizer.bos_token_id
        analysis = self.probe.analyze(record)
        if bos is None or analysis.rendered[0] is None:
            return None
        n = _leading(analysis.ids, bos)
        if n > 1:
            return f"the rendered row starts with {n} BOS tokens"
        encoded = self.probe.tokenizer(analysis.text, add_special_tokens=True)["input_ids"]
        n = _leading(list(encoded), bos)
        if n > 1:
            return (
                f"re-tokenizing the rendered text adds BOS to the template's own: {n} BOS tokens "
                "(the template writes bos_token and the tokenizer adds one too)"
            )
        return None


def _leading(ids: list[int], token: int) -> int:
    return next((k for k, t in enumerate(ids) if t != token), len(ids))


class TemplateParity(_TemplateCheck):
    """Train/inference parity: each generation prompt is an exact token prefix of the row."""

    stage = "template_parity"

    reason = "template_parity"

    def __call__(self, record: Record) -> str | None:
        analysis = self.probe.analyze(record)
        return None if analysis.rendered[0] is None else analysis.prompt_mismatch


class StopTokenTrained(_TemplateCheck):
    """Every assistant turn's EOS / end-of-turn token is inside the trained labels."""

    stage = "stop_untrained"

    reason = "stop_untrained"

    def __call__(self, record: Record) -> str | None:
        analysis = self.probe.analyze(record)
        if analysis.rendered[0] is None:
            return None
        mask, error = analysis.mask
        eos = self.probe.tokenizer.eos_token
        if mask is None:
            return f"the trainer cannot build the loss mask: {error} (eos_token {eos!r})"
        for turn in analysis.turns:
            if not turn.eos_trained:
                return f"message {turn.message}: eos_token {eos!r} is not a trained label"
        return None


class AssistantTokensTrained(_TemplateCheck):
    """Every assistant turn trains at least N answer tokens under the trainer's loss mask."""

    stage = "loss_mask"

    reason = "loss_mask"

    def __init__(self, probe: TemplateProbe, min_tokens: int):
        super().__init__(probe)
        self.min_tokens = min_tokens

    def __call__(self, record: Record) -> str | None:
        analysis = self.probe.analyze(record)
        if analysis.rendered[0] is None:
            return None
        mask, error = analysis.mask
        if mask is None:
            return f"the trainer cannot build the loss mask: {error}"
        for turn in analysis.turns:
            if turn.trained < self.min_tokens:
                return (
                    f"message {turn.message}: {turn.trained} trained answer token(s) < "
                    f"template.min_trained_tokens {self.min_tokens}"
                )
        return None


def template_checks(config: PipelineConfig, tokenizer: PreTrainedTokenizerBase) -> list[RowCheck]:
    """The template checks of a config, cheap to costly, sharing one probe."""
    probe = TemplateProbe(tokenizer)
    return [
        ControlTokens(probe),
        TemplateRenders(probe),
        SequenceLength(probe, config.train.max_seq_length),
        SingleBos(probe),
        TemplateParity(probe),
        StopTokenTrained(probe),
        AssistantTokensTrained(probe, config.template.min_trained_tokens),
    ]


def template_gate(
    checks: Sequence[object], verdicts: Sequence[Verdict], config: TemplateConfig
) -> dict[str, float]:
    """Run level: block when the template checks reject too large a share of the rows they saw."""
    probes = {id(c.probe): c.probe for c in checks if isinstance(c, _TemplateCheck)}
    n_checked = sum(p.n_checked for p in probes.values())
    rejected = sum(v.status == "rejected" and v.reason in TEMPLATE_REASONS for v in verdicts)
    share = rejected / n_checked if n_checked else 0.0
    stats = {"checked": float(n_checked), "rejected": float(rejected), "share": share}
    if probes and share > config.max_rejected_share:
        raise TemplateGateError(
            f"template checks rejected {rejected} of {n_checked} rows ({share:.1%}) > "
            f"template.max_rejected_share {config.max_rejected_share:.1%}: check the base "
            "model's chat template and tokenizer before blaming the data"
        )
    return stats


# -- `tunegate inspect`: the row as the trainer sees it -----------------------------------------


@dataclass(frozen=True)
class Inspection:
    """A rendered row with trained tokens marked, and its counts."""

    text: Text
    n_tokens: int
    n_trained: int
    turns: list[TurnSpan]
    error: str | None


def inspect_row(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                show_ids: bool = False) -> Inspection:  # fmt: skip
    """Colour each token: green = trained label, dim = context only, magenta = control token."""
    from rich.text import Text

    record = Record(tuple((m["role"], m["content"]) for m in messages), "", "<inspect>", 0)
    analysis = Analysis(tokenizer, record)
    ids, error = analysis.rendered
    if ids is None:
        return Inspection(Text(f"chat template fails: {error}", style="bold red"), 0, 0, [], error)
    mask, mask_error = analysis.mask
    mask = mask or [0] * len(ids)
    special = set(tokenizer.all_special_ids)
    text = Text()
    for token, label in zip(ids, mask, strict=True):
        piece = tokenizer.decode([token])
        style = "bold green" if label else "dim"
        if token in special:
            style = "bold magenta on dark_green" if label else "magenta"
        text.append(piece, style=style)
        if show_ids:
            text.append(f"({token})", style="cyan" if label else "dim cyan")
    return Inspection(text, len(ids), sum(mask), analysis.turns, mask_error)
