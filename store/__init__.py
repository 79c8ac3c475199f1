"""The database: migrations and one query layer over PostgreSQL and SQLite."""

from store.database import Database, DatabaseUnavailable, Queries, Row, UniqueViolation
from store.migrations import migrate

__all__ = ["Database", "DatabaseUnavailable", "Queries", "Row", "UniqueViolation", "migrate"]
