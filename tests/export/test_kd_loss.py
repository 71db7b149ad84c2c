"""The distillation loss against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from export.distill import kd_loss, teacher_logits

torch.set_num_threads(1)


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_teacher_logits_give_back_the_probability() -> None:
    p = torch.tensor([0.1, 0.5, 0.93])
    assert torch.allclose(torch.softmax(teacher_logits(p), dim=-1)[:, 1], p, atol=1e-6)


def test_kd_loss_matches_a_hand_computation() -> None:
    s = [[1.0, -0.5], [0.2, 0.7]]  # student logits
    p_teacher = [0.2, 0.9]
    gold = [0, 1]
    T, alpha = 2.0, 0.75
    kl = 0.0
    ce = 0.0
    for row, p, y in zip(s, p_teacher, gold, strict=True):
        # the teacher's softened distribution: softmax([log(1-p), log p] / T)
        t = _softmax([math.log(1 - p) / T, math.log(p) / T])
        q = _softmax([v / T for v in row])
        kl += sum(ti * (math.log(ti) - math.log(qi)) for ti, qi in zip(t, q, strict=True))
        ce += -math.log(_softmax(row)[y])
    expected = alpha * T * T * kl / 2 + (1 - alpha) * ce / 2
    got = kd_loss(torch.tensor(s), torch.tensor(p_teacher), torch.tensor(gold), temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_pure_kd_is_zero_when_the_student_matches_the_teacher() -> None:
    p = torch.tensor([0.3, 0.8])
    loss = kd_loss(teacher_logits(p), p, temperature=3.0, alpha=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_hard_labels_only_is_cross_entropy() -> None:
    s, gold = torch.tensor([[0.3, -1.2], [2.0, 0.1]]), torch.tensor([1, 0])
    got = kd_loss(s, torch.zeros(2), gold, alpha=0.0)
    assert got.item() == pytest.approx(torch.nn.functional.cross_entropy(s, gold).item(), rel=1e-6)


def test_gold_labels_are_required_when_alpha_below_one() -> None:
    with pytest.raises(ValueError, match="gold"):
        kd_loss(torch.zeros(1, 2), torch.zeros(1), None, alpha=0.5)


def test_a_row_without_a_gold_label_learns_from_the_teacher_alone() -> None:
    s = [[1.0, -0.5], [0.2, 0.7], [-0.3, 0.4]]
    p_teacher = [0.2, 0.9, 0.6]
    gold = [0, -1, 1]  # the second row comes from the transfer corpus
    T, alpha = 2.0, 0.75
    total = 0.0
    for row, p, y in zip(s, p_teacher, gold, strict=True):
        t = _softmax([math.log(1 - p) / T, math.log(p) / T])
        q = _softmax([v / T for v in row])
        kl = sum(ti * (math.log(ti) - math.log(qi)) for ti, qi in zip(t, q, strict=True))
        if y < 0:
            total += T * T * kl
        else:
            total += alpha * T * T * kl + (1 - alpha) * -math.log(_softmax(row)[y])
    got = kd_loss(torch.tensor(s), torch.tensor(p_teacher), torch.tensor(gold), temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(total / 3, rel=1e-5)


def test_hard_labels_only_ignore_rows_without_a_label() -> None:
    s, gold = torch.tensor([[0.3, -1.2], [2.0, 0.1], [0.5, 0.5]]), torch.tensor([1, 0, -1])
    got = kd_loss(s, torch.full((3,), 0.5), gold, alpha=0.0)
    # the unlabelled row's KL to p = 0.5 is zero for equal logits; the labelled rows' CE is averaged over all 3
    expected = torch.nn.functional.cross_entropy(s[:2], gold[:2], reduction="sum").item() / 3
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_the_student_learns_unlabelled_conversations_from_the_teacher(tiny_bert_path) -> None:
    """Transfer-corpus conversations carry no label: only the teacher's score can move the student on them."""
    import numpy as np

    from export.bundle import minilm_tokenizer_json
    from export.distill import student_scores, train_student
    from feddetox.data.records import Conversation
    from feddetox.guardian.text import load_tokenizer
    from feddetox.models.loading import load_encoder

    tokenizer = load_tokenizer(minilm_tokenizer_json())  # the tiny BERT has the same vocabulary
    labelled = [Conversation("good morning to you", "", 0)] * 4
    unlabelled = [Conversation("burn the village down", "", None)] * 4
    teacher_p = np.array([0.02] * 4 + [0.98] * 4, dtype=np.float32)
    model = load_encoder(tiny_bert_path, num_labels=2)[0]
    before = student_scores(model, tokenizer, unlabelled[:1])[0]
    train_student(model, tokenizer, labelled + unlabelled, teacher_p, steps=60, batch_size=8, lr=1e-3, alpha=0.5)
    after = student_scores(model, tokenizer, [*unlabelled[:1], *labelled[:1]])
    assert after[0] > 0.8 > before and after[1] < 0.3
    with pytest.raises(ValueError, match="teacher"):
        train_student(model, tokenizer, labelled + unlabelled, None, steps=1)
