"""Alembic environment: runs on the connection `server.db.migrate` passes in.

Imported outside an Alembic run (e.g. by the test that imports every module) it does nothing.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from server.db.models import Base

target_metadata = Base.metadata


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
    else:  # `alembic` on the command line with sqlalchemy.url set
        with create_engine(config.get_main_option("sqlalchemy.url")).begin() as conn:
            run(conn)


if hasattr(context, "config"):  # only inside an Alembic run
    main()
