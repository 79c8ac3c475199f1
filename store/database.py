"""One query layer over PostgreSQL (asyncpg, pooled) and SQLite (the standard library).

Queries are written once, in PostgreSQL's placeholder style (``$1``, ``$2``),
in the SQL both engines share: TEXT, BIGINT, DOUBLE PRECISION, ``RETURNING``,
``ON CONFLICT``. For SQLite the placeholders become ``?1``, ``?2``. Rows come
back as plain dicts.

SQLite is the embedded single-process default: one connection in WAL mode whose
statements run on the event loop itself. Its statements are point reads and small
writes that take microseconds (a commit in WAL mode with ``synchronous=NORMAL`` writes
the log without an fsync), far less than a trip to a worker thread and back, which
cost 60 us of CPU and a contended GIL each (a third of a connection's set-up went
there when aiosqlite ran the connection on its own thread). The two things that could
block the loop are kept off it:

- waiting for another process's write lock: ``busy_timeout`` is 0, and a statement
  that finds the database locked is retried after an ``asyncio.sleep`` that doubles,
  up to ``BUSY_WAIT`` seconds, then fails as SQLite would;
- the checkpoint's fsync: automatic checkpoints are off on the loop's connection, and
  a second connection checkpoints the log on a worker thread every
  ``CHECKPOINT_INTERVAL`` seconds (PASSIVE: writers go on meanwhile), and a last
  time (TRUNCATE) at close.

Every transaction holds one asyncio lock, so a transaction is never interleaved with
another coroutine's statements; a statement outside ``transaction()`` runs in SQLite's
own implicit transaction, at once when no transaction is open and after it otherwise.
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


BUSY_WAIT = 5.0  # seconds a statement waits for another process's write lock
CHECKPOINT_INTERVAL = 5.0  # seconds between the checkpointer's PASSIVE checkpoints
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return ((getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF) in _BUSY_CODES


class _SqliteQueries:
    """The statements of one transaction, or one statement on its own."""

    dialect = "sqlite"

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def _sql(sql: str) -> str:
        # the statements are the code's constants: translated once each, not per run (7 us)
        return _PLACEHOLDER.sub(r"?\1", sql)

    async def _run(self, sql: str, args: tuple[Any, ...]) -> tuple[list[Any], int]:
        return await self._db._until_not_busy(self._sql(sql), args)

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


class _SqliteStatement(_SqliteQueries):
    """One statement on its own: SQLite's implicit transaction, never inside another's."""

    async def _run(self, sql: str, args: tuple[Any, ...]) -> tuple[list[Any], int]:
        return await self._db._standalone(sql, args)


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._alone = _SqliteStatement(self)
        self.path = path
        self._checkpointer = asyncio.create_task(self._checkpoint_every(CHECKPOINT_INTERVAL))

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # Readable by the server's user only; SQLite gives its -wal and -shm
            # files the database file's mode.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(path, 0o600)
            conn = sqlite3.connect(str(path), isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=0")  # waiting for a lock is _until_not_busy's
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's, off the loop
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
        return cls(conn, path)

    def _statement(self, sql: str, args: tuple[Any, ...]) -> tuple[list[Any], int]:
        """Run one statement to its end (every row fetched, so a ``RETURNING`` statement
        completes) and close its cursor; its rows and rowcount."""
        with _driver_errors():
            cursor = self._conn.execute(sql, args)
            try:
                return cursor.fetchall(), cursor.rowcount
            finally:
                cursor.close()

    async def _until_not_busy(self, sql: str, args: tuple[Any, ...]) -> tuple[list[Any], int]:
        """The statement, retried while another process holds the write lock."""
        delay, waited = 0.001, 0.0
        while True:
            try:
                return self._statement(sql, args)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or waited >= BUSY_WAIT:
                    raise
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.1)

    async def _standalone(self, sql: str, args: tuple[Any, ...]) -> tuple[list[Any], int]:
        sql = _SqliteQueries._sql(sql)
        if not self._lock.locked():
            # nothing open, and the statement runs without an await: it cannot land in
            # another coroutine's transaction (only its busy retries wait, under the lock)
            try:
                return self._statement(sql, args)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
        async with self._lock:
            return await self._until_not_busy(sql, args)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._alone.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._alone.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return await self._alone.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._alone.fetchval(sql, *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteQueries]:
        async with self._lock:
            await self._until_not_busy("BEGIN IMMEDIATE", ())
            try:
                yield _SqliteQueries(self)
                await self._until_not_busy("COMMIT", ())
            except BaseException:
                # cancelled or failed at any await (the COMMIT's included): the statements
                # run on the loop, so none is still running; undo what ran and free the
                # one connection
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise

    @asynccontextmanager
    async def migration_lock(self) -> AsyncIterator[None]:
        # One process owns an embedded database; the asyncio lock is enough.
        yield

    async def ping(self) -> None:
        await self.execute("SELECT 1")

    async def checkpoint(self) -> tuple[int, int]:
        """Copy the write-ahead log into the database file from a second connection on a
        worker thread (PASSIVE: the loop's connection goes on reading and writing); the
        log's frames and how many of them are now in the file."""

        def run() -> tuple[int, int]:
            conn = sqlite3.connect(str(self.path), isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout=1000")
                _, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                return log, done
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    async def _checkpoint_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.checkpoint()
            except sqlite3.Error as exc:
                log.warning("SQLite checkpoint failed: %s", exc)

    async def close(self) -> None:
        """Flush the write-ahead log into the database file and close, whatever state the
        connection is in."""
        self._checkpointer.cancel()
        await asyncio.gather(self._checkpointer, return_exceptions=True)
        async with self._lock:
            try:
                if self._conn.in_transaction:
                    self._conn.rollback()
                self._conn.execute("PRAGMA busy_timeout=5000")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("SQLite checkpoint at close failed: %s", exc)
            finally:
                self._conn.close()


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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset of a released connection: nothing beyond what asyncpg always
    does (roll back an open transaction, drop listeners). Its default also sends
    ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` after every
    use, a second round trip per statement (a fifth of a node's CPU in a connect burst,
    and PostgreSQL's too). airwave leaves none of that behind: no session settings
    beyond the pool's own, no cursors outside transactions, no LISTEN, and the one
    session lock (:meth:`PostgresDatabase.migration_lock`) is released or its session
    ended there."""


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
            reset=_keep_session,
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
            # A session lock on a pooled connection: released here, or the session ends
            # (the pool does not reset sessions, see _keep_session)
            try:
                await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            except BaseException:
                conn.terminate()  # cancelled while waiting: it may have been granted
                raise
            try:
                if self.schema:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                yield
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
                except BaseException:
                    conn.terminate()
                    raise

    async def ping(self) -> None:
        async with self._single() as q:
            await q.execute("SELECT 1")

    async def close(self) -> None:
        await asyncio.wait_for(self._pool.close(), timeout=10)


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name
