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
