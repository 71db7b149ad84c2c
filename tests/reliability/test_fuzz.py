"""Schemathesis against the coordinator's OpenAPI schema, in process (ASGI) on a real SQLite database and
blob folder: generated requests, with and without the admin key, never get a 5xx.

Bounded: a fixed number of derandomized examples per operation, so the run takes well under two minutes.
The database holds a started run, devices and tokens first, so that the generated ids meet real rows too.
"""

from __future__ import annotations

import pytest
import schemathesis
from coordinator_helpers import ADMIN_KEY, make_adapter, run_config
from hypothesis import HealthCheck, Phase, given, settings

from feddetox.adapters import to_bytes
from server.rest import create_app
from server.service import build_context, devices, rounds, runs
from server.settings import load_settings

REPORT_KIND = "fuzz"
EXAMPLES = 25
#: operations whose side effects would end the fixture's state for the operations after them
SKIP = {("DELETE", "/api/v1/runs/{run_id}")}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    ctx = build_context(
        load_settings(database_url=f"sqlite:///{tmp / 'coordinator.db'}", state_dir=tmp / "state", admin_key=ADMIN_KEY)
    )
    for i in range(2):
        devices.enrol(ctx, devices.issue_token(ctx).token, f"fuzz-{i}")
    run = runs.create_run(ctx, run_config(rounds=2, clients_per_round=2, min_clients=2))
    runs.set_start_adapter(ctx, run["id"], to_bytes(make_adapter(0)))
    runs.start_run(ctx, run["id"])
    rounds.advance_all(ctx)
    yield create_app(ctx)
    ctx.db.dispose()


@pytest.fixture(scope="module")
def schema(app):
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


def fuzz_operation(operation, statuses: list[int], failures: list[str]) -> None:
    """EXAMPLES generated requests of one operation, each sent with and without the admin key."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case) -> None:
        for headers in ({"X-Admin-Key": ADMIN_KEY}, {}):
            try:
                response = case.call(headers=headers)
            except Exception as exc:  # noqa: BLE001 - the in-process client re-raises what a server answers with 500
                statuses.append(500)
                failures.append(f"{case.method} {case.formatted_path} query={case.query}: {exc!r}"[:400])
                continue
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")

    fuzz()


def test_no_server_error_under_fuzz(schema, report):
    totals = {"operations": 0, "requests": 0, "server_errors": 0}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIP:
            continue
        statuses: list[int] = []
        fuzz_operation(operation, statuses, failures)
        errors = sum(s >= 500 for s in statuses)
        totals["operations"] += 1
        totals["requests"] += len(statuses)
        totals["server_errors"] += errors
        report.add(
            f"fuzz {operation.method.upper()} {operation.path}",
            f"{len(statuses)} generated requests, {errors} server errors",
            ok=errors == 0,
            requests=len(statuses),
            server_errors=errors,
        )
    assert totals["operations"] >= 10 and totals["requests"] > 0
    assert not failures, "\n".join(failures[:10])
