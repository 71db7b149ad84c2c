"""The guardian's test sets and the quality table.

sets = test_sets(data["test"])                 # {name: conversations}, each held out from training
rows = quality_rows({"student .pte int8": scores, ...}, sets, thresholds)
print(format_table(rows))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from export.calibration import classification_metrics
from export.guardian_data import xstest_prompts
from feddetox.data.records import Conversation

#: which test-split sources make up each named test set
TEST_SETS: dict[str, tuple[str, ...]] = {
    "harmful-qa": (
        "advbench-target",
        "advbench-goal",
        "hh-rlhf-unsafe",
        "hh-rlhf-safe",
        "safety-tuned-llamas",
        "harmful-request",
    ),
    "toxicity": ("davidson-toxic", "davidson-neither", "toxigen", "advbench-strings"),
    "benign-qa": ("ultrafeedback", "ultrafeedback-prompt", "pandalm", "alpaca-eval", "alpaca-eval-prompt"),
    "human-labelled": ("davidson-toxic", "davidson-neither", "toxigen", "xstest-safe", "xstest-unsafe"),
    "xstest": ("xstest-safe", "xstest-unsafe"),
}


def test_pool(test: Sequence[Conversation]) -> list[Conversation]:
    """The held-out split plus XSTest's 200 unsafe prompts (never used in training or calibration)."""
    return list(test) + xstest_prompts("unsafe")


def set_masks(pool: Sequence[Conversation]) -> dict[str, np.ndarray]:
    """{test set name: boolean mask over the pool}; "all" is the whole pool."""
    sources = np.array([c.meta.get("source", "") for c in pool])
    out = {name: np.isin(sources, members) for name, members in TEST_SETS.items()}
    out["all"] = np.ones(len(pool), dtype=bool)
    return out


def quality_rows(
    scores: Mapping[str, np.ndarray], pool: Sequence[Conversation], thresholds: Mapping[str, float]
) -> list[dict]:
    """One row per (model, test set): metrics at that model's threshold; scores[model] is p_unsafe over the pool."""
    labels = np.array([int(c.label) for c in pool])
    rows = []
    for model, p in scores.items():
        for name, mask in set_masks(pool).items():
            metrics = classification_metrics(labels[mask], np.asarray(p)[mask], thresholds[model])
            rows.append({"model": model, "test_set": name, **metrics})
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of quality rows."""
    cols = ("model", "test_set", "n", "precision", "recall", "f1", "auroc", "fpr")
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols} if rows else {c: len(c) for c in cols}
    head = "  ".join(c.ljust(widths[c]) for c in cols)
    lines = [head, "-" * len(head)]
    lines += ["  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3f}"
    return str(value)
