"""Fixtures of the coordinator tests: the throwaway PostgreSQL cluster, a database per test (SQLite or
PostgreSQL), and a service context with a clock the test moves (so deadlines need no sleeping)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("feddetox_tests_postgres", Path(__file__).parents[1] / "postgres.py")
_postgres = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_postgres)
postgres_cluster = _postgres.postgres_cluster


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'coordinator.db'}"
    return request.getfixturevalue("postgres_cluster").new_database()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_ctx(db_url, tmp_path, clock):
    """make_ctx(**settings) -> a migrated ServiceContext on this test's database and blob folder."""
    from server.service import build_context
    from server.settings import load_settings

    made = []

    def make(**overrides):
        settings = load_settings(
            database_url=db_url, state_dir=tmp_path / "state", admin_key="test-admin-key-0123456789", **overrides
        )
        ctx = build_context(settings)
        ctx.clock = clock
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.db.dispose()
