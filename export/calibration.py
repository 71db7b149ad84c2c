"""Threshold calibration and the quality metrics, as pure numpy functions.

    t = threshold_for_fpr(p_unsafe_of_benign_val, target_fpr=0.05)
    m = classification_metrics(labels, p_unsafe, t)    # precision, recall, f1, auroc, fpr, ...

A conversation is flagged unsafe when p_unsafe >= threshold.
"""

from __future__ import annotations

import numpy as np


def threshold_for_fpr(benign_scores: np.ndarray, target_fpr: float = 0.05) -> float:
    """The lowest threshold whose false-positive rate on these benign scores is at most `target_fpr`.

    With n scores, at most k = floor(target_fpr * n) of them may be flagged: the threshold lies just above the
    (k+1)-th highest score (ties all stay below it), so the realised FPR is <= target even with ties.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr {target_fpr} is outside [0, 1]")
    scores = np.sort(np.asarray(benign_scores, dtype=np.float64))[::-1]
    if scores.size == 0:
        raise ValueError("threshold_for_fpr needs at least one benign score")
    k = int(np.floor(target_fpr * scores.size + 1e-9))
    if k >= scores.size:
        return 0.0
    return float(min(1.0, np.nextafter(scores[k], np.inf)))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney statistic (ties count half); NaN with one class only."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(order.size, dtype=np.float64)
    ranks[order] = np.arange(1, order.size + 1)
    all_s = np.concatenate([pos, neg])
    # average ranks over ties
    uniq, inverse = np.unique(all_s, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    ranks = (sums / counts)[inverse]
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """precision, recall, f1, fpr (on label 0), accuracy, auroc, n, n_unsafe at `threshold`."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall and tp else 0.0
    return {
        "n": int(y.size),
        "n_unsafe": int(y.sum()),
        "precision": round(precision, 4),
        "recall": round(recall, 4) if recall == recall else recall,
        "f1": round(f1, 4),
        "fpr": round(fp / (fp + tn), 4) if fp + tn else float("nan"),
        "accuracy": round((tp + tn) / max(1, y.size), 4),
        "auroc": round(auroc(y, scores), 4),
    }


def agreement(scores_a: np.ndarray, threshold_a: float, scores_b: np.ndarray, threshold_b: float) -> float:
    """The share of items on which two scorers' decisions (each at its own threshold) agree."""
    a = np.asarray(scores_a) >= threshold_a
    b = np.asarray(scores_b) >= threshold_b
    return float((a == b).mean()) if a.size else float("nan")
