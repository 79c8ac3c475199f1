from __future__ import annotations

import pytest

from auth import Identity
from config import Settings
from rooms.social import SocialGraph
from store import Database, migrate


@pytest.fixture
async def graph(settings: Settings):
    db = await Database.connect(settings)
    await migrate(db)
    try:
        yield SocialGraph(db)
    finally:
        await db.close()


async def test_users_are_recorded_on_first_sight(graph: SocialGraph) -> None:
    assert not await graph.exists("ann")
    await graph.seen(Identity("ann", "Ann"))
    await graph.seen(Identity("ann", ""))  # a token without a name keeps the known one
    assert await graph.exists("ann")
    assert await graph.db.fetchval("SELECT name FROM users WHERE id = 'ann'") == "Ann"
    await graph.seen(Identity("ann", "Annie"))
    assert await graph.db.fetchval("SELECT name FROM users WHERE id = 'ann'") == "Annie"


async def test_blocks_work_both_ways_and_undo(graph: SocialGraph) -> None:
    await graph.block("a", "b")
    await graph.block("a", "b")
    assert await graph.is_blocked("a", "b") and await graph.is_blocked("b", "a")
    assert not await graph.is_blocked("a", "c")
    assert await graph.unblock("a", "b")
    assert not await graph.unblock("a", "b")
    assert not await graph.is_blocked("b", "a")


async def test_matches_are_unordered_pairs(graph: SocialGraph) -> None:
    assert await graph.match("zed", "amy")
    assert not await graph.match("amy", "zed")
    assert await graph.are_matched("amy", "zed") and await graph.are_matched("zed", "amy")
    assert await graph.unmatch("zed", "amy")
    assert not await graph.are_matched("amy", "zed")
