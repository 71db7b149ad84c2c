"""Threshold calibration and the metrics, against direct counts and an independent AUROC."""

from __future__ import annotations

import numpy as np
import pytest

from export.calibration import agreement, auroc, classification_metrics, threshold_for_fpr


@pytest.mark.parametrize("target", [0.0, 0.05, 0.1, 0.333, 1.0])
def test_threshold_meets_the_target_fpr_and_is_the_lowest_that_does(target: float) -> None:
    rng = np.random.default_rng(0)
    benign = rng.beta(2, 5, size=400)
    t = threshold_for_fpr(benign, target)
    fpr = float((benign >= t).mean())
    assert fpr <= target + 1e-12
    if 0 < t:  # lowering it to the next benign score below would exceed the target
        below = benign[benign < t].max()
        assert (benign >= below).mean() > target


def test_threshold_with_ties_stays_within_the_target() -> None:
    benign = np.array([0.9] * 10 + [0.1] * 90)
    t = threshold_for_fpr(benign, 0.05)
    assert (benign >= t).mean() <= 0.05
    assert t > 0.9


def test_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        threshold_for_fpr(np.array([]), 0.05)
    with pytest.raises(ValueError):
        threshold_for_fpr(np.array([0.5]), 1.5)


def test_auroc_matches_pair_counting() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 2)  # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auroc(y, s) == pytest.approx(pairs / (pos.size * neg.size), abs=1e-12)


def test_classification_metrics_by_hand() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.05])
    m = classification_metrics(y, s, 0.5)  # tp=2 fn=1 fp=1 tn=3
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["fpr"] == pytest.approx(0.25)
    assert agreement(s, 0.5, s, 0.5) == 1.0
    assert agreement(s, 0.5, s, 0.0) == pytest.approx(3 / 7)  # 0.9, 0.6 and 0.7 are flagged by both
