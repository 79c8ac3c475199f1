"""One query layer over PostgreSQL (asyncpg, pooled) and SQLite (aiosqlite).

Queries are written once, in PostgreSQL's placeholder style (``$1``, ``$2``),
in the SQL both engines share: TEXT, BIGINT, DOUBLE PRECISION, ``RETURNING``,
``ON CONFLICT``. For SQLite the placeholders become ``?1``, ``?2``. Rows come
back as plain dicts.

SQLite is the embedded single-process default: one connection in WAL mode,
every statement and transaction serialised by one asyncio lock, so a
transaction is never interleaved with another coroutine's statements.
aiosqlite runs the connection on a thread of its own, and every await on it is a
hop there and back (a future, a wake-up of the event loop): a statement is one hop
(run, fetch every row, close the cursor, all on that thread), and a statement outside
``transaction()`` runs in SQLite's own implicit transaction, without the two hops of an
explicit ``BEGIN IMMEDIATE`` ... ``COMMIT`` (a connect made 5 hops of each read and write).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg

from config import Settings

log = logging.getLogger("airwave.store")

_PLACEHOLDER = re.compile(r"\$(\d+)")

Row = dict[str, Any]


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached."""


class UniqueViolation(Exception):
    """A statement broke a UNIQUE or PRIMARY KEY constraint (whatever the driver)."""


def _is_unique_violation(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):
        # CHECK and NOT NULL failures are IntegrityErrors too; only UNIQUE/PK count.
        name = getattr(exc, "sqlite_errorname", "")
        return name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY") or (
            not name and "UNIQUE constraint failed" in str(exc)
        )
    return isinstance(exc, asyncpg.UniqueViolationError)


@contextmanager
def _driver_errors() -> Iterator[None]:
    """The one place that knows what each driver raises for a duplicate key."""
    try:
        yield
    except (sqlite3.IntegrityError, asyncpg.UniqueViolationError) as exc:
        if _is_unique_violation(exc):
            raise UniqueViolation(str(exc)) from exc
        raise


class Queries(Protocol):
    """What a connection or a transaction offers; the rest of airwave uses only this."""

    dialect: str

    async def execute(self, sql: str, *args: Any) -> int: ...
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...


class Database:
    """Base class: ``connect()`` picks the backend from the URL."""

    dialect: str = ""

    @staticmethod
    async def connect(settings: Settings) -> Database:
        url = settings.effective_database_url
        if url.startswith("sqlite:///"):
            return await SqliteDatabase.open(Path(url.removeprefix("sqlite:///")))
        return await PostgresDatabase.open(
            url, pool_size=settings.database_pool_size, schema=settings.database_schema
        )

    async def execute(self, sql: str, *args: Any) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self.transaction() as tx:
            return await tx.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self.transaction() as tx:
            return await tx.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.transaction() as tx:
            return await tx.fetchval(sql, *args)

    def transaction(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    async def ping(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def migration_lock(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- SQLite


def _statement(conn: aiosqlite.Connection, sql: str, args: tuple[Any, ...]) -> tuple[list[Any], int]:
    """On aiosqlite's thread: run one statement to its end (every row fetched, so a
    ``RETURNING`` statement completes) and close its cursor; its rows and rowcount."""
    cursor = conn._conn.execute(sql, args)
    try:
        return cursor.fetchall(), cursor.rowcount
    finally:
        cursor.close()


class _SqliteQueries:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def _sql(sql: str) -> str:
        # the statements are the code's constants: translated once each, not per run (7 us)
        return _PLACEHOLDER.sub(r"?\1", sql)

    async def _run(self, sql: str, args: tuple[Any, ...]) -> tuple[list[Any], int]:
        # aiosqlite's _execute queues a function for its thread (its execute, fetchall and
        # close are a hop each); pinned by tests/store/test_database.py
        with _driver_errors():
            return await self._conn._execute(_statement, self._conn, self._sql(sql), args)

    async def execute(self, sql: str, *args: Any) -> int:
        _, count = await self._run(sql, args)
        return count

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        rows, _ = await self._run(sql, args)
        return [dict(r) for r in rows]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return next(iter(row.values())) if row else None


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # Readable by the server's user only; SQLite gives its -wal and -shm
            # files the database file's mode.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(path, 0o600)
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except Exception as exc:  # sqlite3.OperationalError and friends
            raise DatabaseUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=5000")
        return cls(conn, path)

    # one statement: SQLite's implicit transaction, under the lock (never inside another's)
    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return await _SqliteQueries(self._conn).execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:
            return await _SqliteQueries(self._conn).fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._lock:
            return await _SqliteQueries(self._conn).fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self._lock:
            return await _SqliteQueries(self._conn).fetchval(sql, *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteQueries]:
        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                yield _SqliteQueries(self._conn)
                await self._conn.execute("COMMIT")
            except BaseException:
                # aiosqlite runs statements in order on its own thread, and a
                # cancelled await does not stop them: a BEGIN (or COMMIT) whose
                # waiter was cancelled still runs. Always queue a ROLLBACK behind
                # it, shielded, so the one connection never stays in a transaction.
                await self._rollback()
                raise

    async def _rollback(self) -> None:
        try:
            await asyncio.shield(self._conn.execute("ROLLBACK"))
        except sqlite3.OperationalError:
            pass  # no transaction was open

    @asynccontextmanager
    async def migration_lock(self) -> AsyncIterator[None]:
        # One process owns an embedded database; the asyncio lock is enough.
        yield

    async def ping(self) -> None:
        async with self._lock:
            await self._conn.execute("SELECT 1")

    async def close(self) -> None:
        """Flush the WAL into the database file and close, whatever state the
        connection is in."""
        async with self._lock:
            try:
                await self._rollback()
                await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("SQLite checkpoint at close failed: %s", exc)
            finally:
                await self._conn.close()


# ----------------------------------------------------------------------- PostgreSQL


class _PostgresQueries:
    dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        with _driver_errors():
            status = await self._conn.execute(sql, *args)
        # "INSERT 0 1", "UPDATE 3", "DELETE 0", "SELECT 1" ...
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        with _driver_errors():
            return [dict(r) for r in await self._conn.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        with _driver_errors():
            row = await self._conn.fetchrow(sql, *args)
        return dict(row) if row is not None else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        with _driver_errors():
            return await self._conn.fetchval(sql, *args)


# A fixed key for pg_advisory_lock: "airwave" in ASCII.
MIGRATION_LOCK_KEY = 0x61697277617665


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self.schema = schema

    @classmethod
    async def open(cls, url: str, *, pool_size: int, schema: str = "") -> PostgresDatabase:
        """A pool that connects on demand (min_size 0): the server starts, and says it
        is not ready, while PostgreSQL is unreachable."""
        server_settings = {"search_path": _ident(schema)} if schema else None
        pool = await asyncpg.create_pool(
            url,
            min_size=0,
            max_size=pool_size,
            server_settings=server_settings,
            timeout=5,
            command_timeout=30,
        )
        return cls(pool, schema)

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            conn = await self._pool.acquire(timeout=10)
        except (
            TimeoutError,
            OSError,
            asyncpg.CannotConnectNowError,
            asyncpg.InterfaceError,  # the pool is closed: shutting down
        ) as exc:
            raise DatabaseUnavailable(f"cannot reach PostgreSQL: {exc or type(exc).__name__}") from exc
        try:
            yield conn
        finally:
            await self._pool.release(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresQueries]:
        async with self._acquire() as conn, conn.transaction():
            yield _PostgresQueries(conn)

    @asynccontextmanager
    async def _single(self) -> AsyncIterator[_PostgresQueries]:
        async with self._acquire() as conn:
            yield _PostgresQueries(conn)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._single() as q:
            return await q.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._single() as q:
            return await q.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._single() as q:
            return await q.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self._single() as q:
            return await q.fetchval(sql, *args)

    @asynccontextmanager
    async def migration_lock(self) -> AsyncIterator[None]:
        async with self._acquire() as conn:
            # The schema is created under the lock: CREATE SCHEMA IF NOT EXISTS
            # races when two nodes start at once.
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            if self.schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)

    async def ping(self) -> None:
        async with self._single() as q:
            await q.execute("SELECT 1")

    async def close(self) -> None:
        await asyncio.wait_for(self._pool.close(), timeout=10)


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name
