"""Print the goals of every committed benchmark result as one markdown table (the README's results section).

python bench/summary.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _value(value: object) -> str:
    if value is None:
        return "not measured"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main() -> None:
    print("| benchmark | goal | value | target | met |")
    print("|---|---|---|---|---|")
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        goals = record.get("goals") if isinstance(record, dict) else None
        if not goals:
            continue
        for name, goal in goals.items():
            met = "yes" if goal.get("met") else "**no**"
            print(f"| `{path.stem}` | {name} | {_value(goal.get('value'))} | {goal.get('target')} | {met} |")


if __name__ == "__main__":
    main()
