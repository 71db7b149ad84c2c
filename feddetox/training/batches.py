"""From preference pairs to padded token batches: chat formatting, truncation, seeded order.

A pair becomes `prompt ids` (the prompt as the user turn, up to the assistant header, truncated from the
left so the header stays) followed by the `answer ids` (the assistant turn, truncated from the right), once
for `chosen` and once for `rejected`. Two layouts of a batch of B pairs, the same log-probabilities:

- `collate` (padded): one (2B, T) tensor, the B chosen sequences then the B rejected ones, right-padded to
  the longest of them (T), with a mask of the answer tokens. Each prompt is computed twice, and padding too.
- `pack` (packed): each pair is one segment `prompt | chosen | rejected`, the prompt once; a block mask lets
  the rejected answer see the prompt but not the chosen answer, and its positions continue from the prompt's
  end, so every token sees exactly what it sees in its own padded row. Segments share rows where they fit
  (first fit, longest first, rows as long as the longest segment), so little padding is left.

Both give a `Batch`: the model's inputs, and for every answer token the (row, position) of the hidden state
that predicts it, its id, and the sequence it belongs to (pair i's chosen is i, its rejected is B + i).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from feddetox.data.records import PreferencePair
from feddetox.errors import DataError
from feddetox.packing import first_fit_rows, segment_mask


@dataclass(frozen=True)
class EncodedPair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


@dataclass(frozen=True)
class Batch:
    """The model's inputs for B pairs and where each answer token's log-probability comes from."""

    input_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, L) 1 on real tokens (padded), or (R, 1, L, L) bool, True = may attend
    position_ids: torch.Tensor | None  # (R, L), or None: 0, 1, ... along each row
    predictor: tuple[torch.Tensor, torch.Tensor]  # (N,) rows, (N,) positions of the states predicting answers
    labels: torch.Tensor  # (N,) the answer tokens they predict
    sequence: torch.Tensor  # (N,) which sequence each belongs to: 0..B-1 chosen, B..2B-1 rejected
    num_pairs: int
    real_tokens: int  # prompt + answer tokens of the chosen and of the rejected sequences, no padding
    answer_mask: torch.Tensor | None = None  # (2B, T) 1 on answer tokens (padded layout only)

    @property
    def positions(self) -> int:
        """Positions the model computes: rows x row length (padding included)."""
        return int(self.input_ids.numel())


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
    """Padded layout: one (2B, T) batch, T = the longest prompt+answer among its rows (right padding)."""
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
    row_ids, cols = answer[:, 1:].nonzero(as_tuple=True)  # position t predicts token t + 1
    return Batch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=None,
        predictor=(row_ids, cols),
        labels=input_ids[row_ids, cols + 1],
        sequence=row_ids,
        num_pairs=len(pairs),
        real_tokens=int(attention.sum()),
        answer_mask=answer,
    )


def pack(pairs: Sequence[EncodedPair], pad_id: int) -> Batch:
    """Packed layout: each pair once as `prompt | chosen | rejected`, segments sharing rows where they fit."""
    b = len(pairs)
    lengths = [len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs]
    layout = first_fit_rows(lengths)
    width = max(lengths)
    input_ids = torch.full((len(layout), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(layout), width), dtype=torch.long)
    segment = torch.full((len(layout), width), -1, dtype=torch.long)  # which pair; -1 = padding
    part = torch.zeros((len(layout), width), dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected
    rows, cols, labels, sequence = [], [], [], []
    for r, members in enumerate(layout):
        offset = 0
        for i in members:
            p, c, j = len(pairs[i].prompt), len(pairs[i].chosen), len(pairs[i].rejected)
            span = slice(offset, offset + p + c + j)
            input_ids[r, span] = torch.tensor(pairs[i].prompt + pairs[i].chosen + pairs[i].rejected)
            positions[r, span] = torch.tensor([*range(p + c), *range(p, p + j)])
            segment[r, span] = i
            part[r, offset + p : offset + p + c] = 1
            part[r, offset + p + c : offset + p + c + j] = 2
            # chosen token k (k >= 0) is predicted by the state just before it; the rejected answer's first
            # token by the prompt's last state, its later tokens by the state just before them
            for seq, start, answer in ((i, offset + p, pairs[i].chosen), (b + i, offset + p + c, pairs[i].rejected)):
                before = [offset + p - 1] + list(range(start, start + len(answer) - 1))
                keep = [k for k in range(len(answer)) if before[k] >= offset]  # an empty prompt predicts nothing
                rows += [r] * len(keep)
                cols += [before[k] for k in keep]
                labels += [answer[k] for k in keep]
                sequence += [seq] * len(keep)
            offset += p + c + j
    return Batch(
        input_ids=input_ids,
        attention_mask=segment_mask(segment, part),
        position_ids=positions,
        predictor=(torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)),
        labels=torch.tensor(labels, dtype=torch.long),
        sequence=torch.tensor(sequence, dtype=torch.long),
        num_pairs=b,
        real_tokens=sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs),
    )


def pair_order(num_pairs: int, count: int, seed: int) -> list[int]:
    """`count` pair indices: seeded permutations of range(num_pairs), one after another (cycling)."""
    if num_pairs < 1:
        raise DataError("no preference pairs to train on", field="pairs")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < count:
        order.extend(int(i) for i in rng.permutation(num_pairs))
    return order[:count]
