"""Chat formatting, truncation, padding and the seeded order, with SmolLM2's shipped tokenizer."""

from __future__ import annotations

import pytest

from feddetox.data.records import PreferencePair
from feddetox.errors import DataError
from feddetox.training.batches import collate, encode_pair, format_turns, pair_order


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_path):
    from feddetox.models.loading import load_tokenizer

    return load_tokenizer(tiny_llama_path)


def test_prompt_is_the_user_turn_and_ends_with_the_assistant_header(tokenizer):
    head, answer = format_turns(tokenizer, "What is 2+2?", "4.")
    assert "What is 2+2?" in head and head.rstrip().endswith("assistant")
    assert answer.startswith("4.") and "<|im_end|>" in answer


def test_truncation_keeps_the_prompt_end_and_the_answer_start(tokenizer):
    pair = PreferencePair("word " * 300, "yes " * 300, "no " * 300)
    enc = encode_pair(tokenizer, pair, max_prompt=16, max_response=8)
    assert len(enc.prompt) == 16 and len(enc.chosen) == 8 and len(enc.rejected) == 8
    assert tokenizer.decode(enc.prompt).rstrip().endswith("assistant")
    assert tokenizer.decode(enc.chosen).startswith("yes")


def test_collate_puts_chosen_then_rejected_rows_with_an_answer_mask(tokenizer):
    pairs = [
        PreferencePair("Hi?", "Hello there, friend.", "No."),
        PreferencePair("A longer question here?", "Yes.", "Nope"),
    ]
    encoded = [encode_pair(tokenizer, p, 64, 64) for p in pairs]
    batch = collate(encoded, pad_id=tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 4 and batch.num_pairs == 2
    width = max(len(e.prompt) + max(len(e.chosen), len(e.rejected)) for e in encoded)
    assert batch.input_ids.shape[1] == width  # padded to the longest row only
    for row, (enc, answer) in enumerate(
        [(encoded[0], encoded[0].chosen), (encoded[1], encoded[1].chosen)]
        + [(encoded[0], encoded[0].rejected), (encoded[1], encoded[1].rejected)]
    ):
        mask = batch.answer_mask[row].tolist()
        assert mask[: len(enc.prompt)] == [0] * len(enc.prompt)
        assert sum(mask) == len(answer)
        ids = batch.input_ids[row][batch.answer_mask[row].bool()].tolist()
        assert ids == list(answer)
        assert int(batch.attention_mask[row].sum()) == len(enc.prompt) + len(answer)
    assert batch.real_tokens == int(batch.attention_mask.sum())


def test_an_empty_answer_is_an_error_naming_the_field(tokenizer):
    class Bare:
        chat_template = None
        eos_token = ""

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    with pytest.raises(DataError, match="'rejected'"):
        encode_pair(Bare(), PreferencePair("p", "c", ""), 8, 8)


def test_pair_order_is_seeded_and_cycles_through_every_pair():
    order = pair_order(5, 12, seed=3)
    assert order == pair_order(5, 12, seed=3) and order != pair_order(5, 12, seed=4)
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:10]) == list(range(5))
    with pytest.raises(DataError, match="'pairs'"):
        pair_order(0, 1, seed=0)
