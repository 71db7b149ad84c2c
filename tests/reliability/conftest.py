"""Fixtures of the reliability tests: the coordinator helpers of tests/server, the throwaway PostgreSQL
cluster, and `report`, which writes what each test tried and its outcome as JSON into the folder named by
`FEDDETOX_RELIABILITY_REPORT` (bench/reliability.py assembles them; without the variable nothing is written).

A test module sets `REPORT_KIND` ("fault", "hostile", "fuzz", "byzantine", "device"); a test that fails
is recorded as one failed entry of that kind, so a broken scenario lowers the bench's figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "server"))  # coordinator_helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reliability_helpers

_spec = importlib.util.spec_from_file_location("feddetox_tests_postgres", TESTS / "postgres.py")
_postgres = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_postgres)
postgres_cluster = _postgres.postgres_cluster

REPORT_ENV = "FEDDETOX_RELIABILITY_REPORT"


class Report:
    """Records of one test: `add(name, outcome, ok=True, **figures)`."""

    def __init__(self, kind: str, test: str) -> None:
        self.kind, self.test, self.records = kind, test, []

    def add(self, name: str, outcome: str, *, ok: bool = True, kind: str | None = None, **figures) -> None:
        self.records.append(
            {"kind": kind or self.kind, "name": name, "outcome": outcome, "ok": bool(ok), "test": self.test, **figures}
        )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def report(request):
    kind = getattr(request.module, "REPORT_KIND", "other")
    rec = Report(kind, request.node.nodeid)
    yield rec
    folder = os.environ.get(REPORT_ENV)
    if not folder:
        return
    call = getattr(request.node, "rep_call", None)
    if call is None or call.failed:
        why = str(call.longrepr).strip().splitlines()[-1][:300] if call is not None and call.longrepr else "not run"
        rec.records = [dict(r, ok=False) for r in rec.records]
        rec.records.append(
            {"kind": kind, "name": request.node.name, "outcome": f"test failed: {why}", "ok": False, "test": rec.test}
        )
    Path(folder).mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-180:]
    (Path(folder) / f"{name}.json").write_text(json.dumps(rec.records, indent=1) + "\n")
