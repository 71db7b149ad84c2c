"""Persistence: SQLAlchemy 2 models (`models`), the engine and transactions (`engine`), migrations (`migrate`)."""

from server.db.engine import Database
from server.db.migrate import migrate

__all__ = ["Database", "migrate"]
