"""What a connect asks the database runs on indexes, not scans, whatever the tables'
size (SQLite's EXPLAIN QUERY PLAN of the statements as the code sends them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calls.calls import CallService
from presence.presence import PresenceService
from store import migrate
from store.database import SqliteDatabase


class Recorder:
    """Stands in for the database: records each statement, answers nothing."""

    dialect = "sqlite"

    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        self.statements.append((sql, args))
        return []


async def plans(db: SqliteDatabase, statements: list[tuple[str, tuple[Any, ...]]]) -> list[str]:
    return [row["detail"] for sql, args in statements
            for row in await db.fetch("EXPLAIN QUERY PLAN " + sql, *args)]


async def test_contacts_and_live_calls_of_a_user_scan_no_table(tmp_path: Path) -> None:
    db = await SqliteDatabase.open(tmp_path / "plans.db")
    try:
        await migrate(db)
        recorder = Recorder()
        await PresenceService(recorder).contacts("u1")  # type: ignore[arg-type]
        calls = CallService.__new__(CallService)
        calls.db = recorder  # type: ignore[assignment]
        await calls.live_calls_of("u1")
        assert len(recorder.statements) == 2
        details = await plans(db, recorder.statements)
        assert any("matches" in d for d in details)
        scans = [d for d in details if d.split(" ")[:2] in (["SCAN", t] for t in ("matches", "d", "calls"))]
        assert not scans, details
    finally:
        await db.close()
