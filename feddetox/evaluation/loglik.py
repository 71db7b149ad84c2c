"""Log-likelihood of a continuation given a context, batched: the basis of multiple-choice scoring and of
the refusal-versus-target measure.

    [(logprob, n_tokens)] = continuation_logprobs(model, tokenizer, [("Question: 2+2?\\nAnswer:", " 4")])

The score of a continuation is the sum, over its tokens, of log p(token | everything before it). Tokenization
follows lm-evaluation-harness: the context's trailing spaces move to the continuation, the pair is encoded
whole, and the continuation's tokens are those after the context's own encoding (so a merge across the
boundary is not scored twice). Rows are padded on the left, with position ids counted from each row's first
real token, so every continuation ends at the last position and only the last few positions' logits are
computed (`logits_to_keep`), not (B, T, vocabulary).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from feddetox.evaluation.generate import DEFAULT_MAX_BATCH_TOKENS, length_batches, model_device, pad_id


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


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


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
    keep_param = _accepts_logits_to_keep(model)
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
