"""Greedy, batched generation for evaluation: chat template, left padding, progress.

    answers = generate(model, tokenizer, ["How do I bake bread?"], max_new_tokens=48)

Prompts are sorted by length so a batch holds prompts of similar size (less padding), then the answers are
put back in the caller's order. Left padding with an attention mask makes a prompt's greedy answer the same
in any batch as alone (a test checks it). Works as it is with a PEFT model: its adapter stays on.

Prompts that share a long opening (one jailbreak template wrapped around many goals) can be given a `groups`
label each: a group's common token prefix is run through the model once and its key/value cache copied into
every batch of the group, which then only prefills what follows it (the goal and the template's last words).
The padding of a batch then sits between the shared prefix and each row's own tokens; positions come from
the attention mask, so each row sees the positions it would alone. Same answers up to float rounding (the
prefix's attention is computed in other shapes); a test checks them equal on a tiny model.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Hashable, Sequence

import torch
from tqdm.auto import tqdm

#: at most this many padded prompt tokens in one generation batch
DEFAULT_MAX_BATCH_TOKENS = 16384

#: the prompt layout for a tokenizer without a chat template
PLAIN_TEMPLATE = "User: {prompt}\nAssistant:"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where inputs must go)."""
    return next(model.parameters()).device


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, prompt: str, *, chat: bool = True) -> str:
    """`prompt` as the user turn of the tokenizer's chat template, ready for the assistant's answer.

    Without a chat template (or with `chat=False`) the prompt is laid out as `PLAIN_TEMPLATE`.
    """
    if chat and has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    return PLAIN_TEMPLATE.format(prompt=prompt)


def encode_prompt(tokenizer, prompt: str, *, chat: bool = True) -> list[int]:
    """Token ids of the formatted prompt; a chat template brings its own special tokens."""
    text = format_prompt(tokenizer, prompt, chat=chat)
    templated = chat and has_chat_template(tokenizer)
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def pad_id(tokenizer) -> int:
    """The id used for padding: the pad token, else the end-of-sequence token, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def stop_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's end of sequence and the model's generation config's."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos):
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if int(item) not in ids:
                ids.append(int(item))
    return ids


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T), with every row padded on the left to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted by length, longest first (a memory problem shows in the first batch, not the last)."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices in batches of similar length, longest first: at most `batch_size` rows, and at most
    `max_tokens` tokens once padded to the batch's longest row (a row alone may exceed it)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batches: list[list[int]] = []
    for i in length_order(lengths):
        if batches:
            batch = batches[-1]
            width = lengths[batch[0]]  # the longest: rows come longest first
            if len(batch) < batch_size and (max_tokens is None or (len(batch) + 1) * width <= max_tokens):
                batch.append(i)
                continue
        batches.append([i])
    return batches


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row shares (0 for no rows)."""
    if not rows:
        return 0
    first, n = rows[0], min(len(r) for r in rows)
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return n


def group_rows(groups: Sequence[Hashable] | None, n: int) -> list[list[int]]:
    """Row indices by group label, groups in order of first appearance; one group of every row when `groups`
    is None."""
    if groups is None:
        return [list(range(n))]
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} labels for {n} prompts")
    by_label: dict[Hashable, list[int]] = {}
    for i, label in enumerate(groups):
        by_label.setdefault(label, []).append(i)
    return list(by_label.values())


#: a group shares its prefix only when it is at least this many tokens long
MIN_SHARED_PREFIX = 32


def _shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """The tokens a group prefills once: its common prefix, leaving every row one token of its own; 0 when
    that is shorter than MIN_SHARED_PREFIX."""
    shared = min(common_prefix_length(rows), *(len(r) - 1 for r in rows))
    return shared if shared >= MIN_SHARED_PREFIX else 0


def forward_accepts(model, name: str) -> bool:
    """Whether the model's forward (a PEFT model's base model's) takes the keyword `name`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def cache_argument(model) -> str:
    """The name under which the model takes and returns a key/value cache: `cache` in newer transformers 5
    releases, `past_key_values` before (newer releases still take it, with a deprecation warning)."""
    return "cache" if forward_accepts(model, "cache") else "past_key_values"


def with_prefix(
    prefix: torch.Tensor, cache, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """A batch's (input_ids, attention_mask, cache) with the shared `prefix` (1, P) in front of its left-padded
    tails (B, T - P): the prefix's cache is copied once per row."""
    rows = ids.shape[0]
    past = copy.deepcopy(cache)
    past.batch_repeat_interleave(rows)
    ones = torch.ones_like(prefix).expand(rows, -1)
    return torch.cat([prefix.expand(rows, -1), ids], dim=1), torch.cat([ones, mask], dim=1), past


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
    chat: bool = True,
    progress: bool = True,
    desc: str = "generate",
    groups: Sequence[Hashable] | None = None,
) -> list[str]:
    """Greedy answers to `prompts`, in their order, without the prompt and without special tokens.

    `chat=True` wraps each prompt in the tokenizer's chat template as a user turn. At most
    `max_new_tokens` tokens per answer; generation stops early at an end-of-turn token. A batch holds at
    most `batch_size` prompts and `max_batch_tokens` padded prompt tokens (long jailbreak prompts go in
    smaller batches). On a CPU larger batches pay: each step reads the weights once for the whole batch.
    `groups` (one label per prompt) runs each group's common token prefix once (see the module's docstring);
    without it every batch is prefilled whole.
    """
    from transformers import GenerationConfig

    encoded = [encode_prompt(tokenizer, p, chat=chat) for p in prompts]
    pad = pad_id(tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad,
        eos_token_id=stop_ids(model, tokenizer) or None,
    )
    device = model_device(model)
    cache_name = cache_argument(model) if groups is not None else None
    was_training = model.training
    model.eval()
    answers: list[str] = [""] * len(prompts)
    try:
        with tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress) as bar:
            for members in group_rows(groups, len(prompts)):
                shared = _shared_prefix([encoded[i] for i in members]) if groups is not None else 0
                prefix = cache = None
                if shared:
                    prefix = torch.tensor([encoded[members[0]][:shared]], dtype=torch.long, device=device)  # (1, P)
                    cache = model(input_ids=prefix, use_cache=True)[cache_name]
                # batches are sized by whole rows: the shared prefix's keys and values are copied into every row
                for batch in length_batches([len(encoded[i]) for i in members], batch_size, max_batch_tokens):
                    rows = [members[j] for j in batch]
                    ids, mask = left_pad([encoded[i][shared:] for i in rows], pad)  # (B, T - P)
                    ids, mask, extra = ids.to(device), mask.to(device), {}
                    if cache is not None:
                        ids, mask, extra[cache_name] = with_prefix(prefix, cache, ids, mask)  # (B, T)
                    out = model.generate(
                        input_ids=ids, attention_mask=mask, generation_config=config, **extra
                    )  # (B, T + new)
                    new = out[:, ids.shape[1] :].cpu()
                    for row, i in enumerate(rows):
                        answers[i] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
                    bar.update(len(rows))
    finally:
        model.train(was_training)
    return answers
