"""Chat formatting, truncation, padding and the seeded order, with SmolLM2's shipped tokenizer."""

from __future__ import annotations

import pytest

from feddetox.data.records import PreferencePair
from feddetox.errors import DataError
from feddetox.packing import first_fit_rows
from feddetox.training.batches import EncodedPair, collate, encode_pair, format_turns, pack, pair_order


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


def _targets(batch):
    """{sequence: [(label, predictor's token id)]} in position order, for comparing layouts."""
    rows, cols = batch.predictor
    out = {}
    for r, c, label, seq in zip(
        rows.tolist(), cols.tolist(), batch.labels.tolist(), batch.sequence.tolist(), strict=True
    ):
        out.setdefault(seq, []).append((label, int(batch.input_ids[r, c])))
    return out


def test_pack_predicts_the_same_tokens_from_the_same_contexts_as_collate():
    pairs = [
        EncodedPair((1, 2, 3), (10, 11, 12, 13), (20, 21)),
        EncodedPair((4, 5), (30,), (40, 41, 42)),
        EncodedPair((6,), (50, 51), (60,)),
    ]
    padded, packed = collate(pairs, pad_id=0), pack(pairs, pad_id=0)
    assert packed.num_pairs == padded.num_pairs == 3
    assert (
        packed.real_tokens
        == padded.real_tokens
        == sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)
    )
    assert _targets(packed) == _targets(padded)  # every answer token, predicted by the same previous token
    assert packed.positions < padded.positions  # each prompt once, little padding
    # rows as long as the longest segment (9 tokens); the 6 and the 4 do not fit together
    assert packed.input_ids.shape == (3, 9) and padded.input_ids.shape == (6, 7)


def test_pack_lets_the_rejected_answer_see_its_prompt_but_not_the_chosen_answer():
    pairs = [EncodedPair((1, 2), (10, 11), (20, 21, 22)), EncodedPair((3,), (30,), (40,))]
    batch = pack(pairs, pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 10, 11, 20, 21, 22], [3, 30, 40, 0, 0, 0, 0]]
    assert batch.position_ids.tolist()[0] == [0, 1, 2, 3, 2, 3, 4]  # the rejected answer continues the prompt
    assert batch.position_ids.tolist()[1][:3] == [0, 1, 1]
    mask = batch.attention_mask[0, 0].int().tolist()
    assert mask[3] == [1, 1, 1, 1, 0, 0, 0]  # chosen: prompt + chosen so far
    assert mask[5] == [1, 1, 0, 0, 1, 1, 0]  # rejected: prompt + rejected so far, never the chosen answer
    pad = batch.attention_mask[1, 0].int()
    assert pad[3].tolist() == [0, 0, 0, 1, 0, 0, 0]  # padding sees itself only
    assert pad[:3, 3:].sum() == 0  # and nothing real sees padding
    # the rejected answer's first token is predicted by the prompt's last state, not by the chosen answer's
    rows, cols = batch.predictor
    first_rejected = [
        (r, c) for r, c, s in zip(rows.tolist(), cols.tolist(), batch.sequence.tolist(), strict=True) if s == 2
    ]
    assert first_rejected[0] == (0, 1)


def test_pack_rows_first_fit_longest_first():
    assert first_fit_rows([5, 3, 2, 4, 1]) == [[0], [3, 4], [1, 2]]
    assert first_fit_rows([7]) == [[0]]


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
