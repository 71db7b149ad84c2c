"""The engine and the two kinds of transaction: `read()` and `write()`.

Every state transition runs in one `write()` transaction and locks the rows it changes first with
`db.locked(select(...))`: on PostgreSQL that is `SELECT ... FOR NO KEY UPDATE`, so two coordinators on one
database serialize on the row; on SQLite a write transaction starts with `BEGIN IMMEDIATE`, which takes
the database's single write lock at once (WAL mode keeps readers going meanwhile).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, Select, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from feddetox.errors import UnavailableError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" below emit BEGIN itself
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """One database: `read()` for queries, `write()` for transitions (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = _sqlite_engine(url, immediate=True)
            self.read_engine = _sqlite_engine(url, immediate=False)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
            self.read_engine = self.engine
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction that commits at the end of the block, or rolls back on any exception.

        Callables appended to `session.info["after_commit"]` run after the commit (best effort), e.g. to
        delete a file the committed state no longer references.
        """
        with self._write() as session:
            with session.begin():
                yield session
            for action in session.info.pop("after_commit", []):
                try:
                    action()
                except Exception:  # noqa: BLE001 - clean-up only; the transaction is committed
                    logging.getLogger("feddetox.coordinator").exception("after-commit action failed")

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    def locked(self, stmt: Select) -> Select:
        """The statement with a row lock where the database has row locks.

        PostgreSQL: `FOR NO KEY UPDATE`, which excludes other writers of the row but not the `KEY SHARE`
        locks that foreign-key checks take (inserting an update that references a locked run must not wait
        for it, or an upload and the scheduler deadlock). No transition changes a primary key.
        """
        return stmt if self.is_sqlite else stmt.with_for_update(key_share=True)

    def ping(self) -> None:
        with self.read_engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


def translate(exc: BaseException) -> UnavailableError | None:
    """A database that cannot be reached (restarting, locked too long) as UnavailableError; else None."""
    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return UnavailableError(f"the database is unavailable now, try again: {str(exc.orig)[:200]}")
    return None
