"""The chat-template gate: each row rendered and tokenized exactly as training will see it.

Most silent fine-tuning failures live in the chat template: training on the wrong tokens,
a stop token never learned, prompts cut off, control tokens smuggled into content, or an
inference prompt that differs from the training text. Each check below tests one of these
with the base model's own tokenizer and template, and rejects under its own reason code:

| check | reason | property |
| --- | --- | --- |
| `ControlTokens` | `template` | no special/control token of the tokenizer in any content |
| `SystemTurn` | `template` | no system turn, with `model.system_role: reject` only |
| `TemplateRenders` | (run) | the chat template renders the row; else one run-level error |
| `SequenceLength` | `too_long` | tokens ≤ `train.max_seq_length` (never truncated) |
| `TemplateParity` | `template_parity` | each generation prompt is a token prefix of the row |
| `StopTokenTrained` | `stop_untrained` | each assistant turn's end-of-turn token(s) are trained |
| `AssistantTokensTrained` | `loss_mask` | each assistant turn trains ≥ N answer tokens |

The loss mask and the end of turn are the trainer's own (`tunegate.chat`), so what is checked
here is what trains. Facts about the model rather than a row (a template that fails on the
data's shape, no detectable end of turn, a double BOS when serving) are one run-level error or
one finding (`TemplateProbe.findings`), never thousands of identical row rejections. Run level:
`template_gate` blocks a run whose rejected share is too high.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from tunegate.chat import (
    ChatError,
    EndOfTurn,
    chat_findings,
    end_of_turn,
    model_name,
    render_ids,
    special_ids,
    tokenize_chat,
)
from tunegate.config import PipelineConfig, TemplateConfig
from tunegate.curation.checks.base import CheckSetup
from tunegate.data.records import Record
from tunegate.data.verdicts import Verdict

if TYPE_CHECKING:
    from rich.text import Text
    from transformers import PreTrainedTokenizerBase

    from tunegate.curation.checks.base import RowCheck

TEMPLATE_REASONS = ("template", "too_long", "template_parity", "stop_untrained", "loss_mask")


class TemplateGateError(RuntimeError):
    """The template or tokenizer is wrong, not the rows: too many rejections, or a template
    that fails on the data's shape."""


def content_tokens(tokenizer: PreTrainedTokenizerBase) -> Callable[[Sequence[Record]], list[int]]:
    """Tokens of each record's message contents (no template): the report's length unit."""

    def count(records: Sequence[Record]) -> list[int]:
        texts = ["\n".join(c for _, c in r.messages) for r in records]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(row) for row in ids]

    return count


def control_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Strings content must never hold: special tokens, and added tokens the template uses.

    Plain added tokens that are only whitespace (Gemma's "\n", "\n\n") are text: content with
    a newline is fine even though the template writes one.
    """
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    tokens = set(tokenizer.all_special_tokens)
    for added in tokenizer.added_tokens_decoder.values():
        if added.special or (added.content in template and added.content.strip()):
            tokens.add(added.content)
    return sorted((t for t in tokens if t.strip()), key=len, reverse=True)


@dataclass(frozen=True)
class TurnSpan:
    """One assistant turn in the rendered row: tokens [start, stop) and the trainer's labels."""

    message: int
    start: int
    stop: int
    trained: int
    eos_trained: bool  # the end-of-turn token(s) close the turn's labels


class Analysis:
    """Everything the checks need about one record, computed lazily and at most once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, record: Record, end: EndOfTurn):
        self.tokenizer = tokenizer
        self.messages = record.as_messages()
        self.end = end

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
            raise ChatError(f"chat template fails: {error}")
        return ids

    @cached_property
    def mask(self) -> tuple[list[int] | None, str | None]:
        """The trainer's assistant mask, or why the trainer cannot build one for this row."""
        try:
            chat = tokenize_chat(self.tokenizer, self.messages, self.end)
        except ChatError as exc:
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
        end = list(self.end.ids)
        spans = []
        for i, message in enumerate(self.messages):
            if message["role"] != "assistant":
                continue
            start = len(render_ids(self.tokenizer, self.messages[:i], add_generation_prompt=True))
            stop = len(render_ids(self.tokenizer, self.messages[: i + 1]))
            labels = [t for t, m in zip(self.ids[start:stop], mask[start:stop], strict=True) if m]
            closed = len(labels) >= len(end) and labels[-len(end) :] == end
            spans.append(TurnSpan(i, start, stop, len(labels) - len(end) * closed, closed))
        return spans

    def _show(self, ids: list[int], at: int) -> str:
        return repr(self.tokenizer.decode(ids[at : at + 4])) if at < len(ids) else "<end>"


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    same = (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return next(same, min(len(a), len(b)))


class TemplateProbe:
    """Shares one `Analysis` per row between the checks and counts the rows it saw.

    The end of turn is found once, from the template (`tunegate.chat.end_of_turn`); a template
    without one raises `ChatFormatError` here, before any row is judged.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, end_override: str | None = None):
        self.tokenizer = tokenizer
        self.end = end_of_turn(tokenizer, end_override)
        self.findings = chat_findings(tokenizer, self.end)
        self.n_checked = 0
        self._key: tuple[str, int, str] | None = None
        self._analysis: Analysis | None = None

    def analyze(self, record: Record) -> Analysis:
        key = (record.source, record.source_row, record.record_id)
        if key != self._key or self._analysis is None:
            self._key, self._analysis = key, Analysis(self.tokenizer, record, self.end)
            self.n_checked += 1
        return self._analysis


class _TemplateCheck:
    """Base of the template checks: stateless, so `accept` has nothing to remember.

    The checks of one run share one `TemplateProbe` (`CheckSetup.share`), so a row is
    rendered and tokenized once whatever the number of template checks.
    """

    reason = "template"
    meaning = "chat template fails, or content holds control tokens"
    stage = "template"  # the funnel's row for this check (two checks share `template`)
    needs_tokenizer = True

    def __init__(self, probe: TemplateProbe):
        self.probe = probe

    @staticmethod
    def enabled(config: PipelineConfig) -> bool:
        return config.template.enabled

    @classmethod
    def from_config(cls, config: PipelineConfig, setup: CheckSetup) -> _TemplateCheck:
        return cls(shared_probe(config, setup))

    def accept(self, record: Record) -> None:
        pass


def shared_probe(config: PipelineConfig, setup: CheckSetup) -> TemplateProbe:
    """The run's one probe; a template without an end of turn raises `ChatError` here."""
    return setup.share(
        "template_probe", lambda: TemplateProbe(setup.tokenizer, config.model.end_of_turn)
    )


class ControlTokens(_TemplateCheck):
    """Content holding `<|im_end|>` and the like would forge turn boundaries in training."""

    stage = "control_tokens"
    order = 110

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


class SystemTurn(_TemplateCheck):
    """`model.system_role: reject`: rows with a system turn are not for this model."""

    stage = "system_turn"
    order = 120

    @staticmethod
    def enabled(config: PipelineConfig) -> bool:
        return config.template.enabled and config.model.system_role == "reject"

    def __call__(self, record: Record) -> str | None:
        if any(role == "system" for role, _ in record.messages):
            return "has a system turn (model.system_role: reject)"
        return None


class TemplateRenders(_TemplateCheck):
    """The chat template renders the row. Contract-valid rows all have one shape (optional
    system turn, alternating user/assistant), so a template that raises on one (Gemma's on a
    system turn) is a fact about template and data: one run-level error, not a verdict."""

    stage = "template_render"
    order = 130

    def __call__(self, record: Record) -> str | None:
        analysis = self.probe.analyze(record)
        _, error = analysis.rendered
        if error is None:
            return None
        has_system = any(m["role"] == "system" for m in analysis.messages)
        hint = (
            " Set model.system_role: fold_into_first_user (or reject) for a template that "
            "refuses a system turn."
            if has_system
            else ""
        )
        raise TemplateGateError(
            f"the chat template of {model_name(self.probe.tokenizer)} fails on row "
            f"{record.source}:{record.source_row}: {error}.{hint}"
        )


class SequenceLength(_TemplateCheck):
    """Rows longer than max_seq_length are rejected, never truncated (a cut row loses its stop)."""

    stage = "too_long"
    order = 140

    reason = "too_long"
    meaning = "rendered row exceeds max_seq_length (never truncated)"

    def __init__(self, probe: TemplateProbe, max_length: int):
        super().__init__(probe)
        self.max_length = max_length

    @classmethod
    def from_config(cls, config: PipelineConfig, setup: CheckSetup) -> SequenceLength:
        return cls(shared_probe(config, setup), config.train.max_seq_length)

    def __call__(self, record: Record) -> str | None:
        ids, _ = self.probe.analyze(record).rendered
        if ids is None or len(ids) <= self.max_length:
            return None
        return f"{len(ids)} tokens > train.max_seq_length {self.max_length}"


class TemplateParity(_TemplateCheck):
    """Train/inference parity: each generation prompt is an exact token prefix of the row."""

    stage = "template_parity"
    order = 150

    reason = "template_parity"
    meaning = "generation prompt is not a token prefix of the training rendering"

    def __call__(self, record: Record) -> str | None:
        analysis = self.probe.analyze(record)
        return None if analysis.rendered[0] is None else analysis.prompt_mismatch


class StopTokenTrained(_TemplateCheck):
    """Every assistant turn's end-of-turn token(s) close its trained labels."""

    stage = "stop_untrained"
    order = 160

    reason = "stop_untrained"
    meaning = "an assistant turn's end-of-turn/EOS token is not a trained label"

    def __call__(self, record: Record) -> str | None:
        analysis = self.probe.analyze(record)
        if analysis.rendered[0] is None:
            return None
        mask, error = analysis.mask
        end = self.probe.end.text
        if mask is None:
            return f"the trainer cannot build the loss mask: {error} (end of turn {end!r})"
        for turn in analysis.turns:
            if not turn.eos_trained:
                return f"message {turn.message}: end of turn {end!r} is not a trained label"
        return None


class AssistantTokensTrained(_TemplateCheck):
    """Every assistant turn trains at least N answer tokens under the trainer's loss mask."""

    stage = "loss_mask"
    order = 170

    reason = "loss_mask"
    meaning = "an assistant turn trains fewer than template.min_trained_tokens tokens"

    def __init__(self, probe: TemplateProbe, min_tokens: int):
        super().__init__(probe)
        self.min_tokens = min_tokens

    @classmethod
    def from_config(cls, config: PipelineConfig, setup: CheckSetup) -> AssistantTokensTrained:
        return cls(shared_probe(config, setup), config.template.min_trained_tokens)

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
    from tunegate.curation.checks import row_checks  # the package lists this module's checks

    return [c for c in row_checks(config, tokenizer) if isinstance(c, _TemplateCheck)]


def template_probe(checks: Sequence[object]) -> TemplateProbe | None:
    """The probe the template checks share (None when the template gate is off)."""
    return next((c.probe for c in checks if isinstance(c, _TemplateCheck)), None)


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
                show_ids: bool = False, end: EndOfTurn | None = None) -> Inspection:  # fmt: skip
    """Colour each token: green = trained label, dim = context only, magenta = control token.

    Text is decoded in runs of same-coloured tokens, each as the difference of two prefix
    decodes: decoded one by one, SentencePiece tokens lose their leading spaces.
    """
    from rich.text import Text

    end = end or end_of_turn(tokenizer)
    record = Record(tuple((m["role"], m["content"]) for m in messages), "", "<inspect>", 0)
    analysis = Analysis(tokenizer, record, end)
    ids, error = analysis.rendered
    if ids is None:
        return Inspection(Text(f"chat template fails: {error}", style="bold red"), 0, 0, [], error)
    mask, mask_error = analysis.mask
    mask = mask or [0] * len(ids)
    special = special_ids(tokenizer)

    def style(k: int) -> str:
        if ids[k] in special:
            return "bold magenta on dark_green" if mask[k] else "magenta"
        return "bold green" if mask[k] else "dim"

    text, start, shown = Text(), 0, ""
    for k in range(1, len(ids) + 1):
        if k < len(ids) and not show_ids and style(k) == style(start):
            continue
        upto = tokenizer.decode(ids[:k])
        piece = upto[len(shown) :] if upto.startswith(shown) else tokenizer.decode(ids[start:k])
        text.append(piece, style=style(start))
        if show_ids:
            text.append(f"({ids[start]})", style="cyan" if mask[start] else "dim cyan")
        start, shown = k, upto
    return Inspection(text, len(ids), sum(mask), analysis.turns, mask_error)
