"""Token rows the adapter trains: special tokens the base model lacks, or never learned.

A chat template's turn markers must be tokens the model can read and predict. LoRA on the
linear layers cannot move an embedding or LM-head row, so a marker the tokenizer lacks
(ChatML's `<|im_end|>` given to a Llama 3 base: `model.add_missing_tokens` adds it, see
`tunegate.chat.add_missing_markers`) or whose rows the base never trained (Llama 3 base's
`<|eot_id|>`) gets its rows trained directly, with PEFT's `trainable_token_indices`: the
adapter stores the trained rows of the input embedding and of the LM head (one set when they
are tied), and nothing else of those matrices. bitsandbytes leaves both unquantized in NF4.

The stored rows are the rows' full values, not deltas, so whoever loads the adapter only has
to give the base as many rows as the adapter's tokenizer has tokens (`fit_embeddings`); what
the new rows held before does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunegate.chat import EndOfTurn, check_trained_tokens, template_markers, untrained_rows

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class TokenRows:
    """Rows trained beyond LoRA: what the adapter's manifest records under `tokens`."""

    added: tuple[str, ...]  # special tokens the tokenizer got on top of the base's
    untrained: tuple[str, ...]  # template markers the base has with untrained rows
    indices: tuple[int, ...]  # rows trained in the embedding and the LM head
    base_vocab_size: int  # rows of the base's embedding
    vocab_size: int  # rows after resizing: enough for every token of the tokenizer

    def summary(self) -> dict[str, Any]:
        """The manifest's `tokens` entry: what a loader must add and which rows are trained."""
        return {"added": list(self.added), "untrained_in_base": list(self.untrained),
                "trainable_token_indices": list(self.indices),
                "base_vocab_size": self.base_vocab_size, "vocab_size": self.vocab_size}  # fmt: skip


def plan_token_rows(
    model_dir: Path, tokenizer: PreTrainedTokenizerBase, end: EndOfTurn, train_rows: bool
) -> TokenRows:
    """The rows to train for this tokenizer and template, read from files only (no model load).

    With `train_rows` off (`model.add_missing_tokens: false`) nothing is added, and an
    end-of-turn token the base never trained is refused (`check_trained_tokens`), as LoRA
    alone could never teach the model to stop.
    """
    from transformers import AutoConfig, AutoTokenizer

    base_rows = int(AutoConfig.from_pretrained(model_dir).get_text_config().vocab_size)
    if not train_rows:
        check_trained_tokens(model_dir, tokenizer, end)
        return TokenRows((), (), (), base_rows, base_rows)
    base_vocab = AutoTokenizer.from_pretrained(model_dir).get_vocab()
    vocab = tokenizer.get_vocab()
    added = sorted((t for t in vocab if t not in base_vocab), key=vocab.__getitem__)
    known = {vocab[m] for m in template_markers(tokenizer) if m in base_vocab} | set(end.ids)
    untrained = sorted(untrained_rows(model_dir, sorted(known)))
    indices = sorted({vocab[t] for t in added} | set(untrained))
    return TokenRows(
        added=tuple(added),
        untrained=tuple(tokenizer.convert_ids_to_tokens(untrained)),
        indices=tuple(indices),
        base_vocab_size=base_rows,
        vocab_size=max(base_rows, len(tokenizer)),
    )


def fit_embeddings(model: PreTrainedModel, n_tokens: int) -> None:
    """Give the model a row for each of `n_tokens` tokens (a tokenizer with added markers).

    New rows start at the mean of the existing ones (`set_rows_to_mean`). A model with at least
    as many rows is left as it is.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if n_tokens <= old:
        return
    model.resize_token_embeddings(n_tokens, mean_resizing=False)
    set_rows_to_mean(model, range(old, n_tokens))


def set_rows_to_mean(model: PreTrainedModel, rows: Iterable[int]) -> None:
    """Set `rows` of the input embedding and the LM head to the mean of all other rows.

    The mean row is the common, stable start for a new token (Hewitt, "Initializing New Word
    Embeddings for Pretrained Language Models", 2021): its logit is close to the average one,
    so the model's next-token distribution barely moves before training, whereas a random or
    zero row can make the new token dominate or vanish and the first steps' loss spike.
    Deterministic too, unlike transformers' `mean_resizing` (a sample around the mean).
    """
    import torch

    index = torch.tensor(sorted(set(rows)), dtype=torch.long)
    if not len(index):
        return
    with torch.no_grad():
        for weight in _row_matrices(model):
            keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            keep[index.to(weight.device)] = False
            mean = weight[keep].float().mean(dim=0).to(weight.dtype)
            weight[index.to(weight.device)] = mean


def _row_matrices(model: PreTrainedModel) -> list[torch.Tensor]:
    """The input embedding and the LM head weight, once when they are tied."""
    found: dict[int, torch.Tensor] = {}
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            found.setdefault(module.weight.data_ptr(), module.weight)
    return list(found.values())


def trainable_token_indices(model: PreTrainedModel, rows: TokenRows) -> dict[str, list[int]] | None:
    """PEFT's `trainable_token_indices` for the rows: the same indices in the input embedding
    and the LM head (PEFT ties the two when the model ties them); None when there are none."""
    if not rows.indices:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    return {names[id(m)].rsplit(".", 1)[-1]: list(rows.indices) for m in layers if m is not None}


def expose_head_bias(model: torch.nn.Module) -> None:
    """Let TRL's fused LM head read `bias` of an LM head wrapped for trained rows.

    The fused head reads `lm_head.weight` and `lm_head.bias`; PEFT's `TrainableTokensWrapper`
    passes `weight` through (with the trained rows written in) but not `bias`. Its own forward
    drops a bias too (peft#3649), so only a head without one trains and serves alike; the
    families tunegate knows have none, and a head with one is refused.
    """
    from peft.utils.other import TrainableTokensWrapper

    head = model.get_output_embeddings()
    if not isinstance(head, TrainableTokensWrapper) or "bias" in vars(head):
        return
    if head.original_module.bias is not None:
        raise ValueError(
            "the LM head has a bias, which PEFT's trainable token rows drop; "
            "model.add_missing_tokens cannot train this model's new rows"
        )
    head.bias = None
