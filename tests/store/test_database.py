"""The query layer and migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from config import Settings
from store import Database, DatabaseUnavailable, migrate
from store.migrations import Migration, load_migrations
from tests.conftest import PG_URL, drop_schema


@pytest.fixture
async def db(settings: Settings):
    database = await Database.connect(settings)
    try:
        yield database
    finally:
        await database.close()


async def test_migrations_apply_once_and_are_recorded(db: Database) -> None:
    first = await migrate(db)
    assert first == [m.version for m in load_migrations()]
    assert await migrate(db) == []
    rows = await db.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == first
    assert rows[0]["name"] == "core"


async def test_queries_and_placeholders(db: Database) -> None:
    await migrate(db)
    await db.execute("INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3)", "u1", "Ann", 1.5)
    row = await db.fetchrow("SELECT id, name, created_at FROM users WHERE id = $1", "u1")
    assert row == {"id": "u1", "name": "Ann", "created_at": 1.5}
    assert await db.fetchval("SELECT count(*) FROM users WHERE name = $1 OR name = $1", "Ann") == 1
    changed = await db.execute("UPDATE users SET name = $2 WHERE id = $1", "u1", "Bea")
    assert changed == 1
    returned = await db.fetchrow("UPDATE users SET name = $2 WHERE id = $1 RETURNING name", "u1", "Cy")
    assert returned == {"name": "Cy"}


async def test_transaction_rolls_back_on_error(db: Database) -> None:
    await migrate(db)
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3)", "u2", "x", 0.0)
            raise RuntimeError("boom")
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_concurrent_increments_are_serialised(db: Database) -> None:
    """The pattern chat seq and wallets rely on: UPDATE ... RETURNING inside a transaction."""
    await migrate(db)
    await db.execute("INSERT INTO users (id, name, created_at) VALUES ('c', '0', 0)")

    async def bump() -> int:
        async with db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE users SET created_at = created_at + 1 WHERE id = 'c' RETURNING created_at"
            )
            return int(row["created_at"])

    results = await asyncio.gather(*(bump() for _ in range(40)))
    assert sorted(results) == list(range(1, 41))


async def test_a_failed_migration_leaves_no_record(db: Database) -> None:
    bad = [Migration(9001, "broken", ("CREATE TABLE t9001 (id TEXT)", "THIS IS NOT SQL"))]
    with pytest.raises(Exception):  # noqa: B017 - each engine raises its own syntax error
        await migrate(db, bad)
    assert await db.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 9001") == 0


async def test_unreachable_postgres_raises_database_unavailable(tmp_path: Path) -> None:
    from config import load_settings
    from tests.conftest import free_port

    settings = load_settings(
        {"AIRWAVE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/test"}
    )
    database = await Database.connect(settings)
    try:
        with pytest.raises(DatabaseUnavailable):
            await database.ping()
    finally:
        await database.close()


@pytest.mark.parametrize("backend", ["postgres"])
async def test_two_processes_migrating_at_once_on_postgres(tmp_path: Path, backend: str) -> None:
    from tests.conftest import _require_services

    await _require_services()
    schema = "t_concurrent_migrate"
    await drop_schema(schema)
    script = textwrap.dedent(
        f"""
        import asyncio
        from config import load_settings
        from store import Database, migrate
        async def main():
            s = load_settings({{"AIRWAVE_DATABASE_URL": "{PG_URL}", "AIRWAVE_DATABASE_SCHEMA": "{schema}"}})
            db = await Database.connect(s)
            print(await migrate(db))
            await db.close()
        asyncio.run(main())
        """
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    outputs = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    try:
        assert [p.returncode for p in procs] == [0, 0, 0], [o[1].decode()[-500:] for o in outputs]
        applied = [eval(o[0].decode().strip()) for o in outputs]
        every = [m.version for m in load_migrations()]
        # Exactly one process applied everything; the others found nothing to do.
        assert sorted(applied, key=len) == [[], [], every]
    finally:
        await drop_schema(schema)


@pytest.mark.parametrize("backend", ["embedded"])
async def test_a_transaction_cancelled_at_any_await_leaves_the_connection_usable(db: Database) -> None:
    """Shutdown cancels handlers mid-transaction; the next transaction must still work."""
    await migrate(db)

    async def write(n: int) -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO users (id, name, created_at) VALUES ($1, '', 0)", f"u{n}")
            await asyncio.sleep(0)

    for delay_steps in range(6):
        task = asyncio.ensure_future(write(delay_steps))
        for _ in range(delay_steps):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with db.transaction() as tx:  # would fail "within a transaction" if one leaked
            await tx.execute("INSERT INTO users (id, name, created_at) VALUES ($1, '', 0)", f"ok{delay_steps}")
    assert await db.fetchval("SELECT count(*) FROM users WHERE id LIKE 'ok%'") == 6


async def test_a_sqlite_statement_runs_on_the_loop_without_a_thread(tmp_path: Path) -> None:
    """Outside a transaction a statement runs at once on the loop (no thread, no BEGIN/COMMIT),
    runs to its end (RETURNING, rowcount), maps a duplicate key and is never interleaved into
    another coroutine's open transaction."""
    from store import UniqueViolation
    from store.database import SqliteDatabase

    db = await SqliteDatabase.open(tmp_path / "inline.db")
    try:
        await migrate(db)
        threads = threading.active_count()
        insert = "INSERT INTO users (id, name, created_at) VALUES ($1, $2, 0)"
        assert await db.execute(insert, "h1", "a") == 1
        assert await db.fetchval("UPDATE users SET name = 'b' WHERE id = $1 RETURNING name", "h1") == "b"
        assert threading.active_count() == threads
        with pytest.raises(UniqueViolation):
            await db.execute(insert, "h1", "again")

        async def slow_transaction() -> None:
            async with db.transaction() as tx:
                await tx.execute(insert, "h2", "in")
                await asyncio.sleep(0.05)
                await tx.execute("DELETE FROM users WHERE id = $1", "h2")

        task = asyncio.create_task(slow_transaction())
        await asyncio.sleep(0.01)
        assert await db.fetchval("SELECT count(*) FROM users WHERE id = $1", "h2") == 0
        await task
    finally:
        await db.close()


async def test_a_sqlite_write_waits_for_another_process_lock_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    """Another connection holds the write lock: our write waits (the loop goes on), then
    lands once the lock is free; past BUSY_WAIT it fails as SQLite's busy timeout would."""
    from store.database import SqliteDatabase

    db = await SqliteDatabase.open(tmp_path / "busy.db")
    other = sqlite3.connect(str(tmp_path / "busy.db"), isolation_level=None)
    try:
        await migrate(db)
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(db.execute("INSERT INTO users (id, name, created_at) VALUES ('w', '', 0)"))
        await asyncio.sleep(0.1)
        assert not write.done()  # waiting, asleep: a loop blocked in SQLite's busy handler
        # would have failed it (the lock is still held) or not let this sleep end first
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 2) == 1
        assert await db.fetchval("SELECT name FROM users WHERE id = 'w'") == ""

        other.execute("BEGIN IMMEDIATE")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("store.database.BUSY_WAIT", 0.05)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await db.execute("INSERT INTO users (id, name, created_at) VALUES ('x', '', 0)")
        other.execute("ROLLBACK")
        async with db.transaction() as tx:  # the lock and the connection are free again
            await tx.execute("INSERT INTO users (id, name, created_at) VALUES ('y', '', 0)")
        assert await db.fetchval("SELECT count(*) FROM users WHERE id IN ('x', 'y')") == 1
    finally:
        other.close()
        await db.close()


async def test_sqlite_checkpoints_off_the_loop(tmp_path: Path) -> None:
    """The loop's connection never checkpoints by itself; the checkpointer copies the log
    into the database file from another connection, and close empties the log."""
    from store.database import SqliteDatabase

    path = tmp_path / "wal.db"
    db = await SqliteDatabase.open(path)
    try:
        await migrate(db)
        assert await db.fetchval("PRAGMA wal_autocheckpoint") == 0
        for n in range(50):
            await db.execute("INSERT INTO users (id, name, created_at) VALUES ($1, '', 0)", f"c{n}")
        log, done = await db.checkpoint()
        assert log > 0 and done == log
    finally:
        await db.close()
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    check = sqlite3.connect(str(path))
    try:
        assert check.execute("SELECT count(*) FROM users WHERE id LIKE 'c%'").fetchone()[0] == 50
    finally:
        check.close()


async def test_postgres_pool_sends_no_reset_query_and_frees_the_migration_lock() -> None:
    """A released connection is not reset by a second round trip (asyncpg's default
    ``... RESET ALL``: a session setting survives into the next use, on a pool of one),
    and the session-level migration lock is released however its holder ends."""
    import asyncpg

    from store.database import MIGRATION_LOCK_KEY, PostgresDatabase

    db = await PostgresDatabase.open(PG_URL, pool_size=1)
    other = await asyncpg.connect(PG_URL)
    try:
        await db.fetchval("SELECT set_config('application_name', 'airwave-kept', false)")
        assert await db.fetchval("SHOW application_name") == "airwave-kept"
        async with db.transaction() as tx:  # an open transaction is still rolled back
            await tx.execute("SELECT 1")
        with pytest.raises(RuntimeError):
            async with db.migration_lock():
                assert not await other.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY)
                raise RuntimeError("migration failed")
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY)
        await other.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        assert await db.fetchval("SELECT 2") == 2  # the pool's one connection is fine
    finally:
        await other.close()
        await db.close()
