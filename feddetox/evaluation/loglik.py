"""Log-likelihood of a continuation given a context, batched: the basis of multiple-choice scoring and of
the refusal-versus-target measure.

    [(logprob, n_tokens)] = continuation_logprobs(model, tokenizer, [("Question: 2+2?\\nAnswer:", " 4")])

The score of a continuation is the sum, over its tokens, of log p(token | everything before it). Tokenization
follows lm-evaluation-harness: the context's trailing spaces move to the continuation, the pair is encoded
whole, and the continuation's tokens are those after the context's own encoding (so a merge across the
boundary is not scored twice). Rows are padded on the left, with position ids counted from each row's first
real token, so every continuation ends at the last position and only the last few positions' logits are
computed (`logits_to_keep`), not (B, T, vocabulary).

Continuations that share a context (the choices of a question, a refusal and a target after one prompt) are
scored by `shared_context_logprobs`: each group is one packed segment `context | choice 1 | choice 2 | ...`,
the context computed once; a block mask lets every choice see the context and itself only, and its positions
continue from the context's end, so each token sees exactly what it sees in its own padded row
(`feddetox.packing`, as the DPO step packs a prompt and its two answers). The LM head runs only on the states
that predict a choice token. Segments share rows where they fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from feddetox.evaluation.generate import (
    DEFAULT_MAX_BATCH_TOKENS,
    forward_accepts,
    length_batches,
    model_device,
    pad_id,
)
from feddetox.packing import first_fit_rows, segment_mask


def encode_pair(
    tokenizer, context: str, continuation: str, *, add_special_tokens: bool = True
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of `context + continuation`, split the lm-evaluation-harness way."""
    stripped = context.rstrip(" ")
    continuation = context[len(stripped) :] + continuation
    whole = list(tokenizer(stripped + continuation, add_special_tokens=add_special_tokens)["input_ids"])
    ctx = list(tokenizer(stripped, add_special_tokens=add_special_tokens)["input_ids"])
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx) :]
    return ctx, list(tokenizer(continuation, add_special_tokens=False)["input_ids"])


@torch.inference_mode()
def score_token_rows(
    model,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad: int = 0,
    batch_size: int = 8,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "log-likelihood",
) -> list[tuple[float, int]]:
    """For each (context ids, continuation ids): (sum of the continuation's token log-probs, its length).

    A batch holds at most `batch_size` rows and `max_batch_tokens` padded tokens. A row longer than
    `max_length` loses context tokens from the left; the continuation is kept whole.
    """
    seqs: list[list[int]] = []
    for ctx, cont in rows:
        if not ctx:
            raise ValueError("a context must have at least one token to condition the continuation on")
        seq = list(ctx) + list(cont)
        if max_length is not None and len(seq) > max_length:
            seq = seq[len(seq) - max(max_length, len(cont) + 1) :]
        seqs.append(seq)
    keep_param = forward_accepts(model, "logits_to_keep")
    device = model_device(model)
    was_training = model.training
    model.eval()
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    batches = length_batches([len(s) for s in seqs], batch_size, max_batch_tokens)
    try:
        with tqdm(total=len(rows), desc=desc, unit="seq", disable=not progress) as bar:
            for batch in batches:
                width = max(len(seqs[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, i in enumerate(batch):
                    ids[r, width - len(seqs[i]) :] = torch.tensor(seqs[i])
                    mask[r, width - len(seqs[i]) :] = 1
                positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T), 0 at each row's first real token
                n_cont = max(len(rows[i][1]) for i in batch)
                kwargs = {"logits_to_keep": n_cont + 1} if keep_param else {}
                logits = model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    **kwargs,
                ).logits  # (B, K, V), the last K positions
                logits = logits[:, -(n_cont + 1) : -1].float()  # (B, n_cont, V): predicts the last n_cont tokens
                logprobs = torch.log_softmax(logits, dim=-1)
                for r, i in enumerate(batch):
                    cont = list(rows[i][1])
                    if not cont:
                        results[i] = (0.0, 0)
                        continue
                    target = torch.tensor(cont, device=logprobs.device)
                    picked = logprobs[r, n_cont - len(cont) :].gather(-1, target[:, None])  # (len(cont), 1)
                    results[i] = (float(picked.sum()), len(cont))
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return results


def continuation_logprobs(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
    add_special_tokens: bool = True,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "log-likelihood",
) -> list[tuple[float, int]]:
    """For each (context, continuation) text pair: (sum of the continuation's token log-probs, its tokens)."""
    rows = [encode_pair(tokenizer, c, x, add_special_tokens=add_special_tokens) for c, x in pairs]
    return score_token_rows(
        model,
        rows,
        pad=pad_id(tokenizer),
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        max_length=max_length,
        progress=progress,
        desc=desc,
    )


@dataclass(frozen=True)
class PackedGroups:
    """Packed rows for groups of continuations with one context each, and where each token is predicted."""

    input_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, 1, L, L) bool, True = may attend
    position_ids: torch.Tensor  # (R, L)
    predictor: tuple[torch.Tensor, torch.Tensor]  # (N,) rows, (N,) positions of the states predicting tokens
    labels: torch.Tensor  # (N,) the continuation tokens they predict
    sequence: torch.Tensor  # (N,) which continuation (flat index over the groups) each belongs to


def truncate_group(context: Sequence[int], continuations: Sequence[Sequence[int]], max_length: int | None) -> list[int]:
    """The context, cut from the left so that it and its longest continuation fit `max_length` (>= 1 token)."""
    if not context:
        raise ValueError("a context must have at least one token to condition the continuation on")
    ctx = list(context)
    if max_length is not None:
        longest = max((len(c) for c in continuations), default=0)
        keep = max(max_length - longest, 1)
        ctx = ctx[len(ctx) - min(keep, len(ctx)) :]
    return ctx


def pack_groups(
    groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    first: Sequence[int],
    layout: Sequence[Sequence[int]],
    pad: int,
) -> PackedGroups:
    """Rows of `layout` (group indices per row): each group `context | cont 1 | cont 2 | ...`.

    `first[g]` is the flat index of group g's first continuation. Continuation j's tokens take positions
    len(context), len(context) + 1, ...; its first token is predicted by the context's last state.
    """
    lengths = [len(ctx) + sum(len(c) for c in conts) for ctx, conts in groups]
    width = max(sum(lengths[g] for g in row) for row in layout)
    n_rows = len(layout)
    input_ids = torch.full((n_rows, width), pad, dtype=torch.long)
    positions = torch.zeros((n_rows, width), dtype=torch.long)
    segment = torch.full((n_rows, width), -1, dtype=torch.long)  # which group; -1 = padding
    part = torch.zeros((n_rows, width), dtype=torch.long)  # 0 context, j + 1 continuation j
    rows, cols, labels, sequence = [], [], [], []
    for r, members in enumerate(layout):
        offset = 0
        for g in members:
            ctx, conts = groups[g]
            n = len(ctx)
            input_ids[r, offset : offset + n] = torch.tensor(list(ctx))
            positions[r, offset : offset + n] = torch.arange(n)
            segment[r, offset : offset + lengths[g]] = g
            start = offset + n
            for j, cont in enumerate(conts):
                k = len(cont)
                if k:
                    input_ids[r, start : start + k] = torch.tensor(list(cont))
                    positions[r, start : start + k] = torch.arange(n, n + k)
                    part[r, start : start + k] = j + 1
                    rows += [r] * k
                    cols += [offset + n - 1, *range(start, start + k - 1)]
                    labels += list(cont)
                    sequence += [first[g] + j] * k
                start += k
            offset += lengths[g]
    return PackedGroups(
        input_ids=input_ids,
        attention_mask=segment_mask(segment, part),
        position_ids=positions,
        predictor=(torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)),
        labels=torch.tensor(labels, dtype=torch.long),
        sequence=torch.tensor(sequence, dtype=torch.long),
    )


def _decoder_and_head(model):
    """(decoder giving final normed hidden states, LM head), or None where logits need more than the head."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(lm, "config", None)
    if getattr(config, "final_logit_softcapping", None) or not hasattr(lm, "get_decoder"):
        return None
    head = lm.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return None
    return lm.get_decoder(), head, getattr(config, "_attn_implementation", "sdpa")


@torch.inference_mode()
def score_groups(
    model,
    groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    *,
    pad: int = 0,
    batch_size: int = 16,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "log-likelihood",
) -> list[list[tuple[float, int]]]:
    """Per group (context ids, [continuation ids, ...]): [(sum of the continuation's token log-probs, its
    length), ...], each context computed once (packed, see the module's doc).

    A forward holds at most `batch_size` rows and `max_batch_tokens` tokens; rows are as long as the
    longest group. A group longer than `max_length` loses context tokens from the left. A model whose
    logits are more than its LM head applied to the decoder's states falls back to one row per continuation.
    """
    groups = [(truncate_group(ctx, conts, max_length), [list(c) for c in conts]) for ctx, conts in groups]
    first, total = [], 0
    for _, conts in groups:
        first.append(total)
        total += len(conts)
    parts = _decoder_and_head(model)
    if parts is None:
        flat = score_token_rows(
            model,
            [(ctx, c) for ctx, conts in groups for c in conts],
            pad=pad,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            progress=progress,
            desc=desc,
        )
        return [flat[first[g] : first[g] + len(conts)] for g, (_, conts) in enumerate(groups)]
    decoder, head, attn = parts
    lengths = [len(ctx) + sum(len(c) for c in conts) for ctx, conts in groups]
    sums = torch.zeros(total, dtype=torch.float64)
    if groups:
        capacity = max(lengths)
        rows = first_fit_rows(lengths, capacity)
        per_forward = max(1, min(batch_size, (max_batch_tokens or capacity * batch_size) // capacity))
        device = model_device(model)
        was_training = model.training
        model.eval()
        try:
            with tqdm(total=len(groups), desc=desc, unit="question", disable=not progress) as bar:
                for start in range(0, len(rows), per_forward):
                    layout = rows[start : start + per_forward]
                    batch = pack_groups(groups, first, layout, pad)
                    mask = batch.attention_mask
                    dtype = head.weight.dtype
                    if attn != "sdpa":  # eager attention adds the mask: 0 where allowed, the minimum elsewhere
                        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
                    hidden = decoder(
                        input_ids=batch.input_ids.to(device),
                        attention_mask=mask.to(device),
                        position_ids=batch.position_ids.to(device),
                        use_cache=False,
                    ).last_hidden_state  # (R, L, H)
                    rows_i, cols_i = batch.predictor
                    states = hidden[rows_i.to(device), cols_i.to(device)]  # (N, H)
                    logprobs = torch.log_softmax(head(states).float(), dim=-1)  # (N, V)
                    picked = logprobs.gather(-1, batch.labels.to(device)[:, None])[:, 0].double().cpu()
                    sums.index_add_(0, batch.sequence, picked)
                    bar.update(sum(len(r) for r in layout))
        finally:
            model.train(was_training)
    return [[(float(sums[first[g] + j]), len(c)) for j, c in enumerate(conts)] for g, (_, conts) in enumerate(groups)]


def shared_context_logprobs(
    model,
    tokenizer,
    groups: Sequence[tuple[str, Sequence[str]]],
    *,
    batch_size: int = 16,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
    add_special_tokens: bool = True,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "log-likelihood",
) -> list[list[tuple[float, int]]]:
    """Per (context, [continuation, ...]) text group: [(sum of the continuation's token log-probs, its
    tokens), ...], the same numbers as `continuation_logprobs` on each pair, each context computed once."""
    encoded = []
    for context, continuations in groups:
        pairs = [encode_pair(tokenizer, context, x, add_special_tokens=add_special_tokens) for x in continuations]
        if len({tuple(ctx) for ctx, _ in pairs}) > 1:
            raise ValueError(f"context {context[:60]!r}: its continuations split it into different tokens")
        if not pairs:
            raise ValueError(f"context {context[:60]!r}: no continuation to score")
        ctx = pairs[0][0]
        encoded.append((ctx, [cont for _, cont in pairs]))
    return score_groups(
        model,
        encoded,
        pad=pad_id(tokenizer),
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        max_length=max_length,
        progress=progress,
        desc=desc,
    )
