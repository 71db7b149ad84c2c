"""The student's length-grouped batches: full, every conversation once per epoch, less padding than shuffling."""

from __future__ import annotations

import numpy as np
import pytest

from export.distill import length_grouped_batches


def test_every_conversation_once_per_epoch_in_full_batches() -> None:
    lengths = np.random.default_rng(3).integers(5, 128, size=640)
    batches = length_grouped_batches(lengths, 32, 40, seed=0, window=4)  # two epochs of 20 batches
    assert len(batches) == 40 and all(len(b) == 32 for b in batches)
    for epoch in (batches[:20], batches[20:]):
        seen = sorted(i for b in epoch for i in b)
        assert seen == list(range(640))
    assert batches[:20] != batches[20:]  # a fresh order each epoch


def test_batches_pad_to_less_than_shuffled_ones() -> None:
    lengths = np.random.default_rng(4).choice([16, 24, 120], size=2048)
    grouped = length_grouped_batches(lengths, 32, 64, seed=0, window=16)
    shuffled = np.random.default_rng(0).permutation(2048).reshape(64, 32)
    width = lambda bs: float(np.mean([lengths[list(b)].max() for b in bs]))  # noqa: E731
    assert width(grouped) < 0.6 * width(shuffled)
    # within a window a batch holds neighbours in length, so most batches are of one length only
    assert np.mean([len(set(lengths[b])) == 1 for b in grouped]) > 0.7


def test_seeded_and_small_sets() -> None:
    lengths = list(range(10))
    assert length_grouped_batches(lengths, 4, 7, seed=1) == length_grouped_batches(lengths, 4, 7, seed=1)
    assert length_grouped_batches(lengths, 4, 7, seed=1) != length_grouped_batches(lengths, 4, 7, seed=2)
    tiny = length_grouped_batches([3, 5], 4, 3, seed=0)  # fewer conversations than a batch: repeated to fill it
    assert all(len(b) == 4 and set(b) == {0, 1} for b in tiny)
    with pytest.raises(ValueError, match="batch_size"):
        length_grouped_batches([], 4, 1)


def test_student_logits_come_back_in_order_whatever_the_batching() -> None:
    """The eager student scores in batches of similar length; each row still belongs to its conversation."""
    import torch

    from export.bundle import minilm_tokenizer_json, tiny_bert_classifier
    from export.distill import student_logits
    from feddetox.data.records import Conversation
    from feddetox.guardian import load_tokenizer

    torch.manual_seed(0)
    model = tiny_bert_classifier(minilm_tokenizer_json())
    tok = load_tokenizer(minilm_tokenizer_json())
    convs = [Conversation("word " * n, "reply " * (3 * n % 7)) for n in (9, 1, 5, 2, 30, 3, 7)]
    batched = student_logits(model, tok, convs, batch_size=3)
    alone = np.concatenate([student_logits(model, tok, [c], batch_size=1) for c in convs])
    assert np.allclose(batched, alone, atol=1e-5)
    assert len(set(np.round(batched[:, 1], 5))) == len(convs)  # every conversation scores differently
