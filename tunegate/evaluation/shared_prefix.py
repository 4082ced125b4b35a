"""Multiple-choice log-likelihoods with one forward pass per context (`eval.general.backend:
shared_prefix`).

lm-eval's HF backend scores each (context, continuation) request as its own sequence, so an
item with four choices runs its context four times. Here the requests that share a context are
packed into one sequence, the context once and then every continuation, with an attention mask
that lets each continuation see the context and itself only, and position ids that restart
after the context for every continuation: each continuation token is computed as in its own
sequence, the context is computed once. Items are sorted by packed length and batched up to a
token budget, so the right-padding of a batch is a few tokens.

Only the model computation changes: `SharedPrefixLM` is lm-eval's `HFLM` with
`_loglikelihood_tokens` replaced, so lm-eval still builds the prompts from the task YAML,
tokenizes context and continuation (`HFLM._encode_pair`: encoded jointly, then split), and
computes acc / acc_norm from the returned log-likelihoods, exactly as with its own backend.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM

# Tokens per forward pass (batch size x padded length): a 135M model on 2 CPU cores runs a
# (4, 256) batch at full matmul efficiency, and the mask's cost grows with the square of the
# packed length, so larger passes gain nothing.
TOKENS_PER_PASS = 512

Request = tuple[tuple[str, str], list[int], list[int]]  # (strings, context ids, continuation ids)


class Item(NamedTuple):
    """The requests that share one context, packed as context + each continuation but its last
    token (the last token is only predicted, never read)."""

    context: list[int]
    requests: list[int]  # indices into the request list, one per continuation
    continuations: list[list[int]]

    def __len__(self) -> int:
        return len(self.context) + sum(len(c) - 1 for c in self.continuations)


class SharedPrefixLM(HFLM):
    """lm-eval's HF model whose log-likelihood requests run one forward pass per context."""

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        """(log-likelihood, is greedy) per request, in order, as `HFLM._loglikelihood_tokens`
        computes them. Requests lm-eval would truncate on the left go to it unchanged."""
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        too_long = [i for i, (_, ctx, cont) in enumerate(requests)
                    if len(ctx) + len(cont) > self.max_length + 1]  # fmt: skip
        if too_long:
            done = super()._loglikelihood_tokens([requests[i] for i in too_long], disable_tqdm)
            for i, answer in zip(too_long, done, strict=True):
                answers[i] = answer
        items = group_by_context(requests, skip=set(too_long))
        for batch in length_sorted_batches(items, TOKENS_PER_PASS):
            for i, answer in score_batch(self, batch):
                answers[i] = answer
                self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        assert all(a is not None for a in answers)
        return answers  # type: ignore[return-value]


def group_by_context(requests: list[Request], skip: set[int]) -> list[Item]:
    """One item per distinct context token sequence (a multiple-choice item's choices)."""
    items: dict[tuple[int, ...], Item] = {}
    for i, (_, context, continuation) in enumerate(requests):
        if i in skip:
            continue
        item = items.setdefault(tuple(context), Item(list(context), [], []))
        item.requests.append(i)
        item.continuations.append(list(continuation))
    return list(items.values())


def length_sorted_batches(items: list[Item], tokens_per_pass: int) -> list[list[Item]]:
    """Items longest first, cut into batches of at most `tokens_per_pass` padded tokens (an item
    longer than that is a batch of its own)."""
    batches: list[list[Item]] = []
    for item in sorted(items, key=len, reverse=True):
        if batches and (len(batches[-1]) + 1) * len(batches[-1][0]) <= tokens_per_pass:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def pack(items: list[Item], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, position ids and segment ids (0: context, k: continuation k, -1: padding) of
    `items`, one row each, right-padded to the longest."""
    width = len(items[0])
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(items), width), dtype=torch.long)
    segments = torch.full((len(items), width), -1, dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.context)
        ids[row, :n], positions[row, :n], segments[row, :n] = (
            torch.tensor(item.context), torch.arange(n), 0)  # fmt: skip
        start = n
        for k, continuation in enumerate(item.continuations, start=1):
            read = continuation[:-1]
            end = start + len(read)
            ids[row, start:end] = torch.tensor(read, dtype=torch.long)
            positions[row, start:end] = torch.arange(n, n + len(read))
            segments[row, start:end] = k
            start = end
    return ids, positions, segments


def attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (batch, 1, query, key) mask: a token sees the earlier context tokens and the
    earlier tokens of its own continuation; padding sees only itself (no row fully masked)."""
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    query, key = segments[:, :, None], segments[:, None, :]
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def score_batch(lm: HFLM, items: list[Item]) -> list[tuple[int, tuple[float, bool]]]:
    """(request index, (log-likelihood, is greedy)) of every continuation of `items`, from one
    forward pass, with the autocast and softmax dtype of `HFLM._model_call` and
    `_loglikelihood_tokens`."""
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids, positions, segments = pack(items, pad_id)
    reads = [read_positions(item) for item in items]
    # Logits only where a continuation token is predicted (the positions of any row): the
    # context tokens but its last need none, and the output layer is a large share of the cost.
    keep = sorted({p for row in reads for positions_ in row for p in positions_})
    column = {p: k for k, p in enumerate(keep)}
    with (
        torch.no_grad(),
        torch.autocast(
            device_type=lm.device.type,
            dtype=lm.mixed_precision_dtype,
            enabled=lm.mixed_precision_dtype is not None,
        ),  # fmt: skip
    ):
        logits = lm.model(
            input_ids=ids.to(lm.device),
            position_ids=positions.to(lm.device),
            attention_mask=attention_mask(segments, lm.model.dtype).to(lm.device),
            logits_to_keep=torch.tensor(keep, device=lm.device),
        ).logits
    answers = []
    for row, item in enumerate(items):
        for i, continuation, read in zip(item.requests, item.continuations, reads[row],
                                         strict=True):  # fmt: skip
            picked = logits[row, [column[p] for p in read]]
            logprobs = F.log_softmax(picked, dim=-1, dtype=lm.softmax_dtype)
            target = torch.tensor(continuation, dtype=torch.long, device=lm.device)
            greedy = bool((logprobs.argmax(dim=-1) == target).all())
            loglik = float(logprobs.gather(1, target[:, None]).sum())
            answers.append((i, (loglik, greedy)))
    return answers


def read_positions(item: Item) -> list[list[int]]:
    """Per continuation, the packed positions whose logits predict its tokens: the last
    context token predicts its first token, each of its read tokens the next one."""
    reads, start = [], len(item.context)
    for continuation in item.continuations:
        reads.append([len(item.context) - 1, *range(start, start + len(continuation) - 1)])
        start += len(continuation) - 1
    return reads
