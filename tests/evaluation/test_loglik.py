"""Continuation log-likelihoods and multiple-choice accuracy against an independent hand computation."""

from __future__ import annotations

import pytest
import torch

from feddetox.data.records import MultipleChoice
from feddetox.evaluation.loglik import (
    continuation_logprobs,
    encode_pair,
    pack_groups,
    score_groups,
    shared_context_logprobs,
)
from feddetox.evaluation.utility import (
    accuracy,
    choice_logprobs,
    extract_number,
    gsm8k_fields,
    mc_accuracy,
    mc_pairs,
    mc_predictions,
)
from feddetox.packing import first_fit_rows

PAIRS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("Q: hi\nA:", " a much longer continuation than the others here"),
    ("x:", " y z"),
    ("Context with a trailing space ", "word"),
]


def hand_logprob(model, tokenizer, context: str, continuation: str) -> tuple[float, int]:
    """Sum of the continuation's token log-probs: one unpadded forward of the whole text, by hand."""
    whole = tokenizer(context + continuation)["input_ids"]
    n_ctx = len(tokenizer(context.rstrip(" "))["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].double()  # (T, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    total = sum(float(logprobs[t - 1, whole[t]]) for t in range(n_ctx, len(whole)))
    return total, len(whole) - n_ctx


@pytest.mark.parametrize("batch_size", [1, 3])
def test_continuation_logprobs_equal_a_hand_computation(lively_lm, batch_size: int) -> None:
    model, tokenizer = lively_lm
    got = continuation_logprobs(model, tokenizer, PAIRS, batch_size=batch_size, progress=False)
    for (context, continuation), (score, n) in zip(PAIRS, got, strict=True):
        expected, n_expected = hand_logprob(model, tokenizer, context, continuation)
        assert n == n_expected
        assert score == pytest.approx(expected, abs=1e-3)


GROUPS = [
    ("Question: What is the capital of France?\nAnswer:", [" Paris", " Lyon", " a city on the Seine river"]),
    ("x:", [" y z"]),
    ("Context with a trailing space ", ["word", "two words"]),
    ("Q: hi\nA:", [" a", " much longer continuation than the others here", " b"]),
]


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_shared_context_scores_equal_each_pair_alone(lively_lm, batch_size: int) -> None:
    model, tokenizer = lively_lm
    got = shared_context_logprobs(model, tokenizer, GROUPS, batch_size=batch_size, progress=False)
    assert [len(row) for row in got] == [3, 1, 2, 3]
    for (context, continuations), row in zip(GROUPS, got, strict=True):
        for continuation, (score, n) in zip(continuations, row, strict=True):
            expected, n_expected = hand_logprob(model, tokenizer, context, continuation)
            assert n == n_expected
            assert score == pytest.approx(expected, abs=1e-3)


def test_packed_groups_share_rows_and_see_only_their_context_and_themselves() -> None:
    groups = [([1, 2, 3], [[4, 5], [6]]), ([7], [[8]]), ([9, 10], [[11], [12, 13]])]
    lengths = [6, 2, 5]
    layout = first_fit_rows(lengths, capacity=7)
    assert layout == [[0], [2, 1]]  # longest first; the 2-token group fits beside the 5-token one
    assert first_fit_rows(lengths, capacity=6) == [[0], [2], [1]]
    batch = pack_groups(groups, first=[0, 2, 3], layout=layout, pad=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 0], [9, 10, 11, 12, 13, 7, 8]]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 0]  # the second choice continues from the context
    mask = batch.attention_mask[0, 0]
    assert mask[5].tolist() == [True, True, True, False, False, True, False]  # choice 2 does not see choice 1
    assert mask[4].tolist() == [True, True, True, True, True, False, False]
    assert not batch.attention_mask[1, 0, 5:, :5].any()  # group 1 does not see group 2 in the same row
    # the first token of each choice is predicted by the context's last state
    where = [tuple(rc) for rc in torch.stack(batch.predictor, dim=1).tolist()]
    predicted = dict(zip(batch.labels.tolist(), where, strict=True))
    assert predicted[4] == (0, 2) and predicted[6] == (0, 2) and predicted[5] == (0, 3) and predicted[8] == (1, 5)
    assert not batch.attention_mask[0, 0, 6, :6].any()  # padding attends to itself only
    assert batch.sequence.tolist() == [0, 0, 1, 3, 4, 4, 2]


def test_a_long_group_loses_context_from_the_left_only(lively_lm) -> None:
    model, _ = lively_lm
    context, choices = list(range(5, 25)), [[30, 31, 32], [40]]
    short = score_groups(model, [(context, choices)], max_length=8, progress=False)
    alone = score_groups(model, [(context[-5:], choices)], progress=False)
    assert [s for s, _ in short[0]] == pytest.approx([s for s, _ in alone[0]])
    assert [n for _, n in short[0]] == [3, 1]


def test_the_context_s_trailing_space_moves_to_the_continuation(tiny_lm) -> None:
    _, tokenizer = tiny_lm
    ctx, cont = encode_pair(tokenizer, "Answer: ", "yes")
    assert tokenizer.decode(ctx) == "Answer:" and tokenizer.decode(cont) == " yes"


def test_mc_accuracy_picks_the_best_scoring_choice(lively_lm) -> None:
    model, tokenizer = lively_lm
    items = [
        MultipleChoice("What colour is the sky?", ("Blue", "Green", "A very long answer about the sky"), 0),
        MultipleChoice("2 + 2 =", ("3", "4", "5", "22"), 1),
        MultipleChoice("Capital of Italy?", ("Rome", "Paris"), 0),
    ]
    res = mc_accuracy(model, tokenizer, items, batch_size=4, progress=False)
    # the same scores, choice by choice, by hand
    hand = [[hand_logprob(model, tokenizer, c, x)[0] for c, x in mc_pairs(item)] for item in items]
    preds = [max(range(len(row)), key=row.__getitem__) for row in hand]
    byte_len = [[len(x.encode()) for _, x in mc_pairs(item)] for item in items]
    normalised = [[s / b for s, b in zip(row, lens, strict=True)] for row, lens in zip(hand, byte_len, strict=True)]
    preds_norm = [max(range(len(row)), key=row.__getitem__) for row in normalised]
    assert [r["pred"] for r in res["items"]] == preds
    assert [r["pred_norm"] for r in res["items"]] == preds_norm
    assert res["acc"] == pytest.approx(sum(p == it.answer for p, it in zip(preds, items, strict=True)) / 3)
    for row, expected in zip(res["items"], hand, strict=True):
        assert row["scores"] == pytest.approx(expected, abs=1e-3)
    assert mc_pairs(items[0])[0] == ("Question: What colour is the sky?\nAnswer:", " Blue")
    assert [len(row) for row in choice_logprobs(model, tokenizer, items, progress=False)] == [3, 4, 2]


def test_mc_arithmetic() -> None:
    scores = [[-1.0, -2.0], [-9.0, -10.0], [-3.0, -3.5]]
    assert mc_predictions(scores) == [0, 0, 0]
    # per length: -9/3 = -3 < -10/5 = -2, so the longer second choice wins the second item
    assert mc_predictions(scores, [[1, 1], [3, 5], [1, 1]]) == [0, 1, 0]
    assert accuracy([0, 1, 0], [0, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="answer"):
        mc_accuracy(None, None, [MultipleChoice("q", ("a", "b"), 2)], progress=False)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("She has 3 apples and buys 4 more.\n#### 7", "7"),
        ("The total is $1,250.00.", "1250"),
        ("First 12, then 15, so the answer is -3", "-3"),
        ("no number at all", None),
        ("#### 0.50", "0.5"),
    ],
)
def test_final_number_extraction(text: str, number: str | None) -> None:
    assert extract_number(text) == number


def test_gsm8k_fields_read_the_loader_s_records() -> None:
    item = {"question": "How many?", "answer": "2 + 2 = 4\n#### 4", "final": "4"}
    assert gsm8k_fields(item) == ("How many?", "4")
    assert gsm8k_fields(("How many?", "#### 1,000")) == ("How many?", "1000")
