"""Versioned schema migrations, applied at start.

Each file ``store/migrations/NNNN_name.sql`` is one version. Applied versions
are recorded in ``schema_migrations``; applying is idempotent and, on
PostgreSQL, serialised across processes by an advisory lock so that two
nodes starting at once do not race. Statements are separated by a semicolon
at the end of a line.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from store.database import Database

log = logging.getLogger("airwave.store")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must be NNNN_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations with version {version}")
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")
        )
        statements = tuple(s.strip() for s in re.split(r";\s*$", text, flags=re.M) if s.strip())
        found[version] = Migration(version, match.group(2), statements)
    return [found[v] for v in sorted(found)]


async def migrate(db: Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the migrations not yet applied; return the versions applied now."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[int] = []
    async with db.migration_lock():
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        done = {r["version"] for r in await db.fetch("SELECT version FROM schema_migrations")}
        for m in migrations:
            if m.version in done:
                continue
            async with db.transaction() as tx:
                for statement in m.statements:
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    time.time(),
                )
            applied_now.append(m.version)
            log.info("applied migration %04d_%s", m.version, m.name)
    return applied_now
