"""The comparison as a person reads it: a markdown table like the paper's, and plots per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from feddetox_cli.simulation.config import CONDITIONS, LABELS

#: table columns: (metric key, header); ASR and jailbreak ASR: lower is better
COLUMNS = (
    ("asr_refusal", "ASR (refusal)"),
    ("asr_guardian", "ASR (guardian)"),
    ("jailbreak_asr_refusal", "Jailbreak ASR"),
    ("xstest_safe_compliance", "XSTest safe compl."),
    ("xstest_unsafe_refusal", "XSTest unsafe ref."),
    ("truthfulqa_mc1", "TruthfulQA MC1"),
    ("mmlu_acc", "MMLU"),
)


def _cell(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _in_table_order(by_condition: dict[str, Any]) -> list[tuple[str, Any]]:
    """(condition, value) pairs in the paper's order, whatever order the conditions ran in."""
    order = {c: i for i, c in enumerate(CONDITIONS)}
    return sorted(by_condition.items(), key=lambda item: order.get(item[0], len(order)))


def markdown_table(result: dict[str, Any]) -> str:
    rows = [("base", result["base"]), ("start", result["start"])]
    rows += _in_table_order(result["final"])
    header = "| condition | " + " | ".join(h for _, h in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for key, metrics in rows:
        lines.append(f"| {LABELS.get(key, key)} | " + " | ".join(_cell(metrics.get(m)) for m, _ in COLUMNS) + " |")
    return "\n".join(lines)


def plot_rounds(result: dict[str, Any], path: Path) -> Path:
    """ASR, XSTest safe compliance and utility of every condition, per round (round 0 = the start adapter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("asr_refusal", "ASR, AdvBench (refusal judge)"),
        ("jailbreak_asr_refusal", "ASR, jailbreak-wrapped"),
        ("xstest_safe_compliance", "XSTest safe compliance"),
        ("truthfulqa_mc1", "TruthfulQA MC1"),
        ("mmlu_acc", "MMLU subset accuracy"),
    )
    first = next(iter(result["per_round"].values()))
    xs = result.get("rounds_evaluated") or list(range(len(first)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for condition, rows in _in_table_order(result["per_round"]):
            ys = [r.get(key) for r in rows]
            ax.plot(xs[: len(ys)], ys, marker="o", label=LABELS.get(condition, condition))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    preset = result.get("per_round_preset")
    if preset and preset != result.get("table_preset", preset):
        fig.suptitle(
            f"per round on the {preset!r} evaluation preset (the table: {result['table_preset']!r})", fontsize=9
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
