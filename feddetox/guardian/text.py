"""How a conversation becomes student input: one format, used in training, eager eval, `.pte` and `.onnx`.

The student reads the tokenizer's *pair* encoding of `(prompt, response)`:

    [CLS] prompt [SEP] response [SEP]      token_type_ids 0 ... 0 1 ... 1

and a prompt alone (`response == ""`) as the single sequence `[CLS] prompt [SEP]`. Both are truncated
longest-first to `max_length` (128) tokens. Padding uses the tokenizer's pad id with attention mask 0, on the
right. Everything goes through the `tokenizers` library (no transformers), so that the device and the toolchain
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from feddetox.data.records import Conversation
from feddetox.errors import BundleError

MAX_LENGTH = 128
#: the names of the student's inputs, in the order the exported programs take them
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TEXT_FORMAT = "pair(prompt, response) with longest-first truncation; prompt alone when response is empty"


@dataclass(frozen=True)
class Encoded:
    """A batch of student inputs; every array is int64 of shape (B, T)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.input_ids, self.attention_mask, self.token_type_ids


def load_tokenizer(path: str | Path, *, max_length: int = MAX_LENGTH) -> Tokenizer:
    """Load a `tokenizer.json` and set the guardian's truncation; padding is done by `encode`."""
    path = Path(path)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise BundleError(f"file {path.name}: not a readable tokenizer.json ({exc})") from exc
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, strategy="longest_first")
    return tok


def _inputs(conversations: Sequence[Conversation]) -> list:
    """What the tokenizer encodes: the (prompt, response) pair, or the prompt alone when there is no response."""
    return [(c.prompt, c.response) if c.response else c.prompt for c in conversations]


def encode(
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    *,
    pad_to: int | None = None,
    pad_id: int = 0,
) -> Encoded:
    """Encode conversations; pad to the longest in the batch, or to `pad_to` tokens when given."""
    encodings = tokenizer.encode_batch(_inputs(conversations))
    width = pad_to if pad_to is not None else max((len(e.ids) for e in encodings), default=1)
    batch = len(encodings)
    ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    types = np.zeros((batch, width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = min(len(enc.ids), width)
        ids[row, :n] = enc.ids[:n]
        mask[row, :n] = 1
        types[row, :n] = enc.type_ids[:n]
    return Encoded(ids, mask, types)


def visible(tokenizer: Tokenizer, conversations: Sequence[Conversation]) -> list[Conversation]:
    """The part of each conversation that the student reads: the prompt and the response cut where `tokenizer`'s
    truncation cuts them (the original text up to the last kept token, case and accents kept). A conversation the
    student reads whole comes back as it is (the same object).

    A teacher that scores these views labels exactly what the student sees: with the whole conversation, a long
    one's teacher label may rest on text the student never reads (a teacher that keeps a long answer's end
    against the student's start), which no amount of distillation can copy.
    """
    out = []
    for c, enc in zip(conversations, tokenizer.encode_batch(_inputs(conversations)), strict=True):
        ends = [0, 0]  # where the last kept token of the prompt (sequence 0) and of the response (1) ends
        for seq, (_, end) in zip(enc.sequence_ids, enc.offsets, strict=True):
            if seq is not None:
                ends[seq] = max(ends[seq], end)
        prompt, response = c.prompt[: ends[0]], c.response[: ends[1]]
        whole = prompt == c.prompt.rstrip() and response == c.response.rstrip()
        out.append(c if whole or (c.response and not response) else replace(c, prompt=prompt, response=response))
    return out
