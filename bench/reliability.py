"""Reliability and security figures: runs the tests of tests/reliability with FEDDETOX_RELIABILITY_REPORT
set, collects what each test tried and its outcome, and writes bench/results/reliability.json.

    python bench/reliability.py                 # every scenario (PostgreSQL ones need initdb/pg_ctl)
    python bench/reliability.py -k "not postgres"

Goals: faults_survived_fraction == 1, updates_lost == 0, hostile_inputs_refused_fraction == 1,
server_errors_under_fuzz == 0, byzantine_deviation_ratio <= 0.1. A test that fails counts as a fault not
survived or an input not refused (it writes one failed record of its kind).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Goal, load_average, load_record, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("feddetox", "grpcio", "fastapi", "sqlalchemy", "psycopg", "schemathesis", "hypothesis", "numpy")


def run_tests(report_dir: Path, extra: list[str]) -> tuple[int, float]:
    env = {**os.environ, "FEDDETOX_RELIABILITY_REPORT": str(report_dir)}
    command = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider", *extra]
    print("running:", " ".join(command[1:]), flush=True)
    start = time.monotonic()
    code = subprocess.call(command, cwd=REPO, env=env)
    return code, time.monotonic() - start


#: a test's temporary folder inside an outcome message (pytest's tmp_path): shown as <tmp>/ in the result
TMP_PATH = re.compile(re.escape(tempfile.gettempdir()) + r"/pytest-of-[^/]+/pytest-\d+/[^/\s]+/")


def collect(report_dir: Path) -> list[dict]:
    """The tests' records, with their temporary folders left out of the messages."""
    records = []
    for path in sorted(report_dir.glob("*.json")):
        records.extend(json.loads(TMP_PATH.sub("<tmp>/", path.read_text())))
    return records


def fraction(records: list[dict]) -> float | None:
    return sum(r["ok"] for r in records) / len(records) if records else None


def summarize(records: list[dict]) -> tuple[dict, dict[str, Goal]]:
    faults = [r for r in records if r["kind"] == "fault"]
    hostile = [r for r in records if r["kind"] == "hostile"]
    fuzz = [r for r in records if r["kind"] == "fuzz"]
    byzantine = [r for r in records if r["kind"] == "byzantine"]
    control = [r for r in records if r["kind"] == "byzantine_control"]
    # a failed fault test may not have counted its updates: unknown, so the goal is not met
    lost = None if any(not r["ok"] for r in faults) else sum(r.get("updates_lost", 0) for r in faults)
    fuzz_errors = None if any("server_errors" not in r for r in fuzz) else sum(r["server_errors"] for r in fuzz)
    ratios = [r.get("deviation_ratio") for r in byzantine]
    ratio = None if not ratios or None in ratios or not all(r["ok"] for r in byzantine) else max(ratios)
    figures = {
        "faults_injected": len(faults),
        "faults_survived": sum(r["ok"] for r in faults),
        "updates_accepted_under_faults": sum(r.get("updates_accepted", 0) for r in faults),
        "hostile_inputs_tried": len(hostile),
        "hostile_inputs_refused": sum(r["ok"] for r in hostile),
        "fuzz_operations": len(fuzz),
        "fuzz_requests": sum(r.get("requests", 0) for r in fuzz),
        "byzantine_worst_delta_ratio": max((r.get("delta_deviation_ratio", 0) for r in byzantine), default=None),
        "byzantine_plain_fedavg_ratio": max((r.get("deviation_ratio", 0) for r in control), default=None),
        "faults": [
            {k: r[k] for k in ("name", "outcome", "ok", "updates_accepted", "updates_lost") if k in r} for r in faults
        ],  # fmt: skip
        "hostile_inputs": [
            {k: r[k] for k in ("name", "outcome", "ok", "status", "reason") if k in r} for r in hostile
        ],  # fmt: skip
        "fuzz": [{k: r[k] for k in ("name", "requests", "server_errors", "ok") if k in r} for r in fuzz],
        "byzantine": [
            {
                k: r[k]
                for k in ("name", "outcome", "ok", "rule", "attack", "deviation_ratio", "delta_deviation_ratio")
                if k in r
            }
            for r in byzantine + control
        ],  # fmt: skip
    }
    goals = {
        "faults_survived_fraction": Goal(fraction(faults), 1.0, ">="),
        "updates_lost": Goal(lost, 0, "<="),
        "hostile_inputs_refused_fraction": Goal(fraction(hostile), 1.0, ">="),
        "server_errors_under_fuzz": Goal(fuzz_errors if fuzz else None, 0, "<="),
        "byzantine_deviation_ratio": Goal(ratio, 0.1, "<="),
    }
    return figures, goals


def main(argv: list[str]) -> int:
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="feddetox-reliability-") as folder:
        code, seconds = run_tests(Path(folder), argv)
        records = collect(Path(folder))
    figures, goals = summarize(records)
    figures = {"pytest_exit_code": code, "pytest_seconds": round(seconds, 1), **figures}
    path = write_result(
        "reliability",
        command="python bench/reliability.py" + (" " + " ".join(argv) if argv else ""),
        figures=figures,
        goals=goals,
        load=load_record(before),
        packages=PACKAGES,
        notes=[
            "byzantine_deviation_ratio: ||robust global - FedAvg(honest)|| / ||FedAvg(honest)|| over the adapter, the"
            " worst over rules (median, trimmed mean, norm clipping), attacks (x50, sign flip) and 3 rounds;"
            " byzantine_worst_delta_ratio is the same distance over the norm of the honest round's change",
            "the devices of the fault and hostile tests are in-test gRPC clients uploading seeded random adapters",
        ],
    )
    print(f"wrote {path}")
    for name, goal in goals.items():
        g = goal.to_json()
        print(f"  {name}: {g['value']} (target {g['target']}) {'met' if g['met'] else 'NOT MET'}")
    return 0 if code == 0 and all(goal.to_json()["met"] for goal in goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
