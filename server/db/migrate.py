"""Apply the Alembic migrations in `server/migrations/` (the only way the schema is made or changed).

feddetox coordinator migrate     # also done by `serve` at start
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from server.db.engine import Database

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
#: key of the PostgreSQL advisory lock held while migrating, so that two coordinators do not race
MIGRATION_LOCK = 0x0FEDDE70


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(db: Database) -> str | None:
    with db.read_engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(db: Database) -> str:
    """Upgrade the database to the newest revision; returns it."""
    config = alembic_config(db.url)
    with db.engine.begin() as conn:
        if not db.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return head_revision()
