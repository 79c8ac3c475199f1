"""The suite's private PostgreSQL and Redis (tests/services.py): they answer, run
unprivileged, and leave nothing behind, even when their owner is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.services import (
    DIR_PREFIX,
    OWNER_FILE,
    PrivateServices,
    ServicesUnavailable,
    remove_abandoned_dirs,
)

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def _uid(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[1])


async def test_private_services_answer_run_unprivileged_and_leave_nothing() -> None:
    services = PrivateServices().start()
    directory = services.directory
    pids = [process.pid for process, _ in services._processes]
    try:
        assert directory and directory.is_dir() and len(pids) == 2
        conn = await asyncpg.connect(services.pg_url, timeout=10)
        try:
            assert await conn.fetchval("SELECT 1 + 1") == 2
        finally:
            await conn.close()
        client = aioredis.from_url(services.redis_url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        if os.geteuid() == 0:  # PostgreSQL refuses root; neither runs as root
            assert all(_uid(pid) != 0 for pid in pids)
    finally:
        services.stop()
    assert not directory.exists()
    assert not any(_alive(pid) for pid in pids)
    services.stop()  # a second stop is harmless


def test_a_missing_postgres_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIRWAVE_TEST_PG_BIN", str(tmp_path))
    with pytest.raises(ServicesUnavailable) as refused:
        PrivateServices().start()
    message = str(refused.value)
    assert "apt-get install postgresql" in message and "AIRWAVE_TEST_PG_URL" in message
    assert "\n" not in message


def test_a_missing_redis_names_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRWAVE_TEST_REDIS_SERVER", str(tmp_path / "redis-server"))
    with pytest.raises(ServicesUnavailable) as refused:
        PrivateServices(want_postgres=False).start()
    assert "apt-get install redis-server" in str(refused.value)


def test_services_stop_when_their_owner_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives no chance to clean up: the parent-death signal stops the servers,
    and the next start removes the directory."""
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from tests.services import PrivateServices\n"
         "s = PrivateServices().start()\n"
         "print(s.directory, *[p.pid for p, _ in s._processes], flush=True)\n"
         "time.sleep(60)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert owner.stdout
        directory, *pids = owner.stdout.readline().split()
    finally:
        owner.kill()
        owner.wait()
    assert len(pids) == 2 and Path(directory).is_dir()
    deadline = time.monotonic() + 15
    while any(_alive(int(pid)) for pid in pids):
        assert time.monotonic() < deadline, f"servers outlived their owner: {pids}"
        time.sleep(0.1)
    remove_abandoned_dirs(Path(directory).parent)
    assert not Path(directory).exists()


def test_only_abandoned_directories_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    abandoned, in_use, foreign = tmp_path / f"{DIR_PREFIX}a", tmp_path / f"{DIR_PREFIX}b", tmp_path / "x"
    for directory, owner in ((abandoned, dead.pid), (in_use, os.getpid()), (foreign, dead.pid)):
        directory.mkdir()
        (directory / OWNER_FILE).write_text(str(owner))
    remove_abandoned_dirs(tmp_path)
    assert not abandoned.exists() and in_use.exists() and foreign.exists()
