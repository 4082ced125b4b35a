"""How a conversation becomes tokens and labels, for any model family: the one place that knows.

Training, the chat-template gate, perplexity scoring, `tunegate inspect` and the evals all go
through these functions, so what the gate checks is what trains and what the evals feed.

Model families differ in three ways that silently break fine-tuning (README, "Your own model"):
- **the end of an assistant turn** is not `eos_token` for Gemma (`<end_of_turn>`), Llama 3 base
  (`<|eot_id|>`), Qwen base (`<|im_end|>`) or Phi-3 (`<|end|>`). `end_of_turn` finds it by
  rendering a probe answer with the template and reading the special token(s) written after it;
  those are trained, and written as the stop tokens of the adapter's generation config.
- **BOS**: Llama 3, Gemma and Mistral templates write `bos_token` while their tokenizers also
  add one when encoding text. `render_ids` feeds exactly one BOS (the template's, or the
  tokenizer's when the template writes none); the double BOS an inference server would build
  from the rendered text is a finding about the model (`chat_findings`), not about any row.
- **the template**: base models ship none, Gemma's refuses a system turn. `load_tokenizer` sets
  `model.chat_template` (a shipped name or a `.jinja` file) and `model.system_role`, and with
  `model.add_missing_tokens` adds the template's turn markers the tokenizer lacks as special
  tokens (their rows are trained with the adapter: `tunegate.training.token_rows`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunegate.config import PipelineConfig

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# Name -> file in tunegate/templates/ (the families' own templates; sources in its README).
SHIPPED_TEMPLATES = {
    "chatml": "chatml.jinja",
    "llama3": "llama3.jinja",
    "qwen2.5": "qwen_25.jinja",
    "qwen3": "qwen3.jinja",
    "gemma": "gemma.jinja",
    "gemma3": "gemma3.jinja",
    "mistral": "mistral_v2v3.jinja",
    "mistral_v1": "mistral_v1.jinja",
    "mistral_tekken": "mistral_v3_tekken.jinja",
    "phi3": "phi_3.jinja",
    "phi4": "phi_4.jinja",
}
# Prepended to a template for `model.system_role: fold_into_first_user`: the system text opens
# the first user message, as Gemma 3's own template does. Inside the template, so the adapter's
# saved tokenizer, lm-eval and any server rendering with it fold the same way training did.
FOLD_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' and messages | length > 1 -%}"
    "{%- set messages = [{'role': messages[1]['role'], 'content': messages[0]['content'] "
    "+ '\\n\\n' + messages[1]['content']}] + messages[2:] -%}"
    "{%- endif -%}\n"
)
PROBE_ANSWER = "Probe answer 7"
# What a turn marker looks like in a template: `<|im_end|>`, `<end_of_turn>`, `[INST]`.
MARKER = re.compile(r"<\|[A-Za-z_]+\|>|<[a-z_]+>|\[/?[A-Z_]+\]")

log = logging.getLogger(__name__)


class ChatError(RuntimeError):
    """A conversation cannot be turned into tokens and labels (a row-level problem)."""


class ChatFormatError(ChatError):
    """The model's chat format cannot be trained as configured (one run-level error)."""


@dataclass(frozen=True)
class TokenizedChat:
    """One conversation as the model sees it; `assistant_mask` is 1 where the loss applies."""

    input_ids: list[int]
    assistant_mask: list[int]


@dataclass(frozen=True)
class EndOfTurn:
    """The token(s) that close an assistant turn, and where they were found."""

    ids: tuple[int, ...]
    text: str
    source: str  # "template" (found by rendering) or "model.end_of_turn"


# -- loading --------------------------------------------------------------------------------------


def template_text(spec: str, config: PipelineConfig | None = None) -> str:
    """A shipped template by name, or a `.jinja` file (relative to the config file's folder)."""
    if spec in SHIPPED_TEMPLATES:
        return (TEMPLATES_DIR / SHIPPED_TEMPLATES[spec]).read_text()
    path = config.resolve(spec) if config is not None else Path(spec).expanduser()
    if not path.is_file():
        raise ChatFormatError(f"model.chat_template {spec!r}: no such file")
    return path.read_text()


def load_tokenizer(
    model_dir: Path | str, config: PipelineConfig | None = None
) -> PreTrainedTokenizerBase:
    """The base model's tokenizer with the config's chat template and system-role policy.

    Only the tokenizer is read (fast). Without a chat template from either the model or the
    config there is nothing to train against: that is one error naming the model.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = config.model if config is not None else None
    if model is not None and model.chat_template:
        tokenizer.chat_template = template_text(model.chat_template, config)
    if not isinstance(tokenizer.chat_template, str) or not tokenizer.chat_template:
        names = ", ".join(SHIPPED_TEMPLATES)
        raise ChatFormatError(
            f"{model_dir}: the tokenizer has no chat template; set model.chat_template to one "
            f"of {names} or to a .jinja file"
        )
    if model is not None and model.system_role == "fold_into_first_user":
        tokenizer.chat_template = FOLD_SYSTEM + tokenizer.chat_template
    if model is not None and model.add_missing_tokens:
        add_missing_markers(tokenizer)
    return tokenizer


def add_missing_markers(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Add the template's markers the tokenizer lacks as special tokens (atomic, never split).

    Done here, where every stage gets its tokenizer, so the gate, training, the evals and the
    adapter's saved tokenizer all give the new markers the same ids (appended after the vocab).
    """
    missing = missing_markers(tokenizer)
    if missing:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": missing}, replace_extra_special_tokens=False
        )
        log.info(
            "%s: added the template's %s as special tokens (model.add_missing_tokens); their "
            "embedding and LM-head rows train with the adapter", model_name(tokenizer),
            ", ".join(missing),
        )  # fmt: skip
    return missing


def model_name(tokenizer: PreTrainedTokenizerBase) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or "the base model")


# -- rendering ------------------------------------------------------------------------------------


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether encoding plain text prepends BOS (Llama, Gemma, Mistral do; ChatML models not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and list(tokenizer("a")["input_ids"][:1]) == [bos]


def render_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = False,
) -> list[int]:
    """Token ids of the chat template's rendering with exactly one BOS where the model has one.

    The template's tokens as written, except: a leading run of BOS (a template writing
    `bos_token` before a turn marker that is itself BOS) is fed once, and a model whose
    tokenizer adds BOS gets it even when the template writes none, as encoding text would.
    """
    ids = list(
        tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=False, add_generation_prompt=add_generation_prompt
        )
    )
    bos = tokenizer.bos_token_id
    if bos is None:
        return ids
    lead = _leading(ids, bos)
    if lead > 1:
        return ids[lead - 1 :]
    if lead == 0 and tokenizer_adds_bos(tokenizer):
        return [bos, *ids]
    return ids


def render_text(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = False,
) -> str:
    """The rendered text (what a server applying the template would get)."""
    return str(
        tokenizer.apply_chat_template(
            messages, tokenize=False, return_dict=False, add_generation_prompt=add_generation_prompt
        )
    )


def _leading(ids: Sequence[int], token: int) -> int:
    return next((k for k, t in enumerate(ids) if t != token), len(ids))


def special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of the tokenizer's special tokens (plain added tokens like Gemma's "\\n" excluded)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in tokenizer.added_tokens_decoder.items() if t.special)
    return ids


# -- end of turn ----------------------------------------------------------------------------------


def end_of_turn(tokenizer: PreTrainedTokenizerBase, override: str | None = None) -> EndOfTurn:
    """The token(s) the template writes after an assistant message's content.

    Found by rendering a probe conversation: the special tokens right after the probe answer
    (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|end|>`, `</s>`), not what `eos_token` says.
    `override` (`model.end_of_turn`) names them instead; it must still be in the rendering.
    """
    probe = [{"role": "user", "content": "Probe question"},
             {"role": "assistant", "content": PROBE_ANSWER}]  # fmt: skip
    name = model_name(tokenizer)
    try:
        text = render_text(tokenizer, probe)
    except Exception as exc:
        raise ChatFormatError(
            f"{name}: the chat template fails on a plain user/assistant exchange: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    prompt = render_text(tokenizer, probe[:1], add_generation_prompt=True)
    if PROBE_ANSWER in text:
        after = text.rsplit(PROBE_ANSWER, 1)[1]
    elif text.startswith(prompt):  # the answer is not written (the gate's `loss_mask` says so)
        after = text[len(prompt) :]
    else:
        raise ChatFormatError(f"{name}: the chat template does not write the assistant's content")
    # Special tokens are atomic, so the text after the answer tokenizes alone as in context.
    tail = list(tokenizer(after, add_special_tokens=False)["input_ids"])
    if override is not None:
        ids = tuple(tokenizer.encode(override, add_special_tokens=False))
        if not ids or _find_last(tail, ids) is None:
            raise ChatFormatError(
                f"{name}: model.end_of_turn {override!r} is not what the chat template writes "
                f"after an assistant message ({after!r})"
            )
        return EndOfTurn(ids, override, "model.end_of_turn")
    special = special_ids(tokenizer)
    start = 0
    while (
        start < len(tail)
        and tail[start] not in special
        and not tokenizer.decode(tail[start : start + 1]).strip()
    ):  # whitespace before the marker (" </s>")
        start += 1
    stop = start
    while stop < len(tail) and tail[stop] in special:
        stop += 1
    if stop == start:
        missing = missing_markers(tokenizer)
        lacks = (
            f" The tokenizer lacks the template's {', '.join(missing)}: set "
            "model.add_missing_tokens: true to add them as special tokens and train their rows "
            "with the adapter, or"
            if missing
            else ""
        )
        raise ChatFormatError(
            f"{name}: the chat template writes {after!r} after an assistant message: no special "
            f"token of this tokenizer ends the turn, so the model could not learn to stop.{lacks} "
            "use a template whose turn markers the tokenizer has (model.chat_template), or name "
            "the end-of-turn token (model.end_of_turn)"
        )
    ids = tuple(tail[start:stop])
    return EndOfTurn(ids, tokenizer.decode(list(ids)), "template")


def template_markers(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Marker-like strings of the template (`<|im_end|>`, `<end_of_turn>`, `[INST]`), in order."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return list(dict.fromkeys(MARKER.findall(template)))


def missing_markers(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The template's markers the tokenizer does not have as one token (ChatML given to a
    Llama 3 base model)."""
    vocab = tokenizer.get_vocab()
    return [m for m in template_markers(tokenizer) if m not in vocab]


def _find_last(seq: Sequence[int], sub: Sequence[int]) -> int | None:
    """Index just past the last occurrence of `sub` in `seq`."""
    n = len(sub)
    for k in range(len(seq) - n, -1, -1):
        if list(seq[k : k + n]) == list(sub):
            return k + n
    return None


# -- labels ---------------------------------------------------------------------------------------


def _check_prefix(prefix: list[int], full: list[int], what: str) -> None:
    """Masks come from prefix lengths, so each prefix must tokenize as the start of the whole."""
    if full[: len(prefix)] != prefix:
        raise ChatError(
            f"{what} does not tokenize as a prefix of the full conversation; the chat template "
            "renders turns differently in context, so assistant tokens cannot be located"
        )


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
    end: EndOfTurn | None = None,
) -> TokenizedChat:  # fmt: skip
    """Render a conversation and mark the tokens of its assistant turns.

    Templates rarely have `{% generation %}` markers, so each assistant turn is located by
    rendering the conversation up to it twice: once ending in the generation prompt (what the
    model is given) and once including the turn (what it must produce). The tokens in between,
    cut after the end-of-turn token(s), are the answer plus its end: the model learns to stop,
    while what the template adds after it (a newline) stays unlabelled, as do system and user
    turns. `end` defaults to the template's own (`end_of_turn`); pass it to find it once.
    """
    end = end or end_of_turn(tokenizer)
    full = render_ids(tokenizer, messages)
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
        turn = render_ids(tokenizer, messages[: i + 1])
        _check_prefix(prompt, full, f"the prompt before message {i}")
        _check_prefix(turn, full, f"the conversation up to message {i}")
        stop = _find_last(turn[len(prompt) :], end.ids)
        if stop is None:
            raise ChatError(
                f"assistant message {i} renders without the end-of-turn token {end.text!r}"
            )
        mask[len(prompt) : len(prompt) + stop] = [1] * stop
    if not any(mask):
        raise ChatError("conversation has no assistant turn: nothing to learn from")
    return TokenizedChat(full, mask)


# -- the base weights -----------------------------------------------------------------------------


def untrained_rows(model_dir: Path, ids: Sequence[int]) -> dict[int, str]:
    """Token ids whose embedding or LM-head row is (near) zero in the base weights.

    Pretraining never saw such a token (Llama 3 base's `<|eot_id|>`): its row stayed at zero,
    so the model can neither read nor predict it, and LoRA on the linear layers cannot teach
    it. A row whose largest value is below 1/1000 of the typical row's counts as untrained.
    """
    from safetensors import safe_open

    found: dict[int, str] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if not name.endswith(("embed_tokens.weight", "lm_head.weight")):
                    continue
                matrix = f.get_slice(name)
                n_rows = matrix.get_shape()[0]
                sample = matrix[: min(n_rows, 4096)].abs().amax(dim=1)
                floor = float(sample.median()) * 1e-3
                for i in ids:
                    if i < n_rows and float(matrix[i : i + 1].abs().amax()) <= floor:
                        found.setdefault(i, name)
    return found


def check_trained_tokens(model_dir: Path, tokenizer: PreTrainedTokenizerBase,
                         end: EndOfTurn) -> None:  # fmt: skip
    """Refuse to train a turn end the base model has never learned (see `untrained_rows`)."""
    rows = untrained_rows(model_dir, end.ids)
    if rows:
        what = ", ".join(f"{tokenizer.convert_ids_to_tokens(i)!r} (id {i}, {name})"
                         for i, name in rows.items())  # fmt: skip
        raise ChatFormatError(
            f"{model_dir}: the end-of-turn token {what} is untrained in the base model (its "
            "row is zero): LoRA on the linear layers cannot teach the model to produce it, so "
            "the adapter would never stop. Set model.add_missing_tokens: true to train its "
            "embedding and LM-head rows with the adapter, train from the instruct model, or "
            "pick a template whose end of turn the base model knows (model.chat_template)"
        )


# -- findings about the model ---------------------------------------------------------------------


def chat_findings(tokenizer: PreTrainedTokenizerBase, end: EndOfTurn) -> list[dict[str, str]]:
    """Facts about the model's chat format a user serving the adapter must know, once per run."""
    probe = [{"role": "user", "content": "Probe question"}]
    findings = []
    name = model_name(tokenizer)
    bos = tokenizer.bos_token_id
    text = render_text(tokenizer, probe, add_generation_prompt=True)
    written = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if bos is not None and tokenizer.bos_token and text.startswith(tokenizer.bos_token):
        if _leading(written, bos) > 1:
            findings.append({"code": "template_repeats_bos", "message": (
                f"{name}: the chat template writes BOS {tokenizer.bos_token!r} twice at the "
                "start; tunegate trains and evaluates with one. Serve with a template that "
                "writes it once."
            )})  # fmt: skip
        if tokenizer_adds_bos(tokenizer):
            findings.append({"code": "double_bos", "message": (
                f"{name}: the chat template writes BOS {tokenizer.bos_token!r} and the tokenizer "
                "adds one when encoding text. tunegate trains and evaluates with exactly one. "
                "When serving, pass token ids from apply_chat_template(tokenize=True), or encode "
                "the rendered text with add_special_tokens=False (llama.cpp: the chat endpoint, "
                "not /completion with the rendered text); otherwise the model sees two BOS."
            )})  # fmt: skip
    eos = tokenizer.eos_token_id
    if eos is None or tuple([eos]) != end.ids:
        findings.append({"code": "end_of_turn_is_not_eos", "message": (
            f"{name}: assistant turns end with {end.text!r} ({end.source}), not eos_token "
            f"{tokenizer.eos_token!r}: tunegate trains {end.text!r} and writes it into the "
            "adapter's generation_config.json eos_token_id, so generation stops there."
        )})  # fmt: skip
    return findings


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, end: EndOfTurn) -> list[int]:
    """What generation must stop at: the end of turn first, then the model's eos (if other)."""
    ids = list(dict.fromkeys(end.ids[:1]))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def chat_summary(tokenizer: PreTrainedTokenizerBase, end: EndOfTurn) -> dict[str, object]:
    """The chat format as recorded in the adapter's manifest."""
    return {
        "end_of_turn": end.text,
        "end_of_turn_ids": list(end.ids),
        "end_of_turn_source": end.source,
        "stop_token_ids": stop_token_ids(tokenizer, end),
        "bos_token": tokenizer.bos_token,
        "tokenizer_adds_bos": tokenizer_adds_bos(tokenizer),
        "findings": chat_findings(tokenizer, end),
    }
