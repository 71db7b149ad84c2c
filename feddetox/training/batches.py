"""From preference pairs to padded token batches: chat formatting, truncation, seeded order.

A pair becomes `prompt ids` (the prompt as the user turn, up to the assistant header, truncated from the
left so the header stays) followed by the `answer ids` (the assistant turn, truncated from the right), once
for `chosen` and once for `rejected`. A batch of B pairs is one (2B, T) tensor: the B chosen sequences, then
the B rejected ones, right-padded to the longest of them (T), with a mask of the answer tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from feddetox.data.records import PreferencePair
from feddetox.errors import DataError


@dataclass(frozen=True)
class EncodedPair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (2B, T): chosen rows, then rejected rows
    attention_mask: torch.Tensor  # (2B, T): 1 on real tokens
    answer_mask: torch.Tensor  # (2B, T): 1 on answer tokens

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def format_turns(tokenizer: Any, prompt: str, answer: str) -> tuple[str, str]:
    """(prompt text ending with the assistant header, answer text) with the tokenizer's chat template.

    Without a chat template: "User: {prompt}\\nAssistant: " and the answer followed by the EOS token.
    """
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
        if full.startswith(head):
            return head, full[len(head) :]
    return f"User: {prompt}\nAssistant: ", answer + (tokenizer.eos_token or "")


def encode_pair(tokenizer: Any, pair: PreferencePair, max_prompt: int, max_response: int) -> EncodedPair:
    """Token ids of a pair, truncated: the prompt keeps its last `max_prompt`, answers their first `max_response`."""
    head, chosen = format_turns(tokenizer, pair.prompt, pair.chosen)
    _, rejected = format_turns(tokenizer, pair.prompt, pair.rejected)
    prompt_ids = _ids(tokenizer, head)[-max_prompt:]
    chosen_ids, rejected_ids = _ids(tokenizer, chosen)[:max_response], _ids(tokenizer, rejected)[:max_response]
    for field, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
        if not ids:
            raise DataError("the answer is empty after formatting; a pair needs two non-empty answers", field=field)
    return EncodedPair(tuple(prompt_ids), tuple(chosen_ids), tuple(rejected_ids))


def collate(pairs: Sequence[EncodedPair], pad_id: int) -> Batch:
    """One (2B, T) batch, T = the longest prompt+answer among its rows (right padding)."""
    rows = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    prompt_lens = [len(p.prompt) for p in pairs] * 2
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    answer = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, plen) in enumerate(zip(rows, prompt_lens, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
        answer[i, plen : len(row)] = 1
    return Batch(input_ids, attention, answer)


def pair_order(num_pairs: int, count: int, seed: int) -> list[int]:
    """`count` pair indices: seeded permutations of range(num_pairs), one after another (cycling)."""
    if num_pairs < 1:
        raise DataError("no preference pairs to train on", field="pairs")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < count:
        order.extend(int(i) for i in rng.permutation(num_pairs))
    return order[:count]
