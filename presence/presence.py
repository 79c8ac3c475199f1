"""Presence: a user is online while any of their sockets is connected.

Socket counts per user sit behind :class:`SocketCounter` (in-process now:
this node's sockets; a Redis version counts across nodes later). Going
offline stores ``users.last_seen``. The people told, and the only ones who may
ask, are the user's contacts: matches, and the other of a direct chat both have
written in; never across a block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from auth import Identity
from store import Database


class SocketCounter(Protocol):
    async def add(self, user_id: str) -> int:
        """One more socket; the user's socket count after it."""
        ...

    async def remove(self, user_id: str) -> int: ...
    async def count(self, user_id: str) -> int: ...


class InProcessSocketCounter:
    def __init__(self) -> None:
        self._sockets: dict[str, int] = {}

    async def add(self, user_id: str) -> int:
        self._sockets[user_id] = self._sockets.get(user_id, 0) + 1
        return self._sockets[user_id]

    async def remove(self, user_id: str) -> int:
        left = self._sockets.get(user_id, 0) - 1
        if left <= 0:
            self._sockets.pop(user_id, None)
            return 0
        self._sockets[user_id] = left
        return left

    async def count(self, user_id: str) -> int:
        return self._sockets.get(user_id, 0)


@dataclass(frozen=True)
class PresenceStatus:
    user_id: str
    online: bool
    last_seen: float | None

    def to_json(self) -> dict[str, Any]:
        return {"userId": self.user_id, "online": self.online, "lastSeen": self.last_seen}


class PresenceService:
    def __init__(self, db: Database, sockets: SocketCounter | None = None) -> None:
        self.db = db
        self.sockets: SocketCounter = sockets or InProcessSocketCounter()

    async def connected(self, user_id: str) -> bool:
        """A socket of the user connected; True when that made them online."""
        return await self.sockets.add(user_id) == 1

    async def disconnected(self, user_id: str) -> float | None:
        """A socket closed; the stored ``lastSeen`` when it was their last one, else None."""
        if await self.sockets.remove(user_id) > 0:
            return None
        now = time.time()
        await self.db.execute("UPDATE users SET last_seen = $2 WHERE id = $1", user_id, now)
        return now

    async def status(self, user_id: str) -> PresenceStatus | None:
        """None for a user never seen."""
        row = await self.db.fetchrow("SELECT last_seen FROM users WHERE id = $1", user_id)
        online = await self.sockets.count(user_id) > 0
        if row is None and not online:
            return None
        last_seen = row["last_seen"] if row else None
        return PresenceStatus(user_id, online, last_seen)

    async def contacts(self, user_id: str) -> list[str]:
        """Who may see the user's presence: a match, or the other of a direct chat both
        have written in (an unsolicited message makes no contact); never across a block."""
        rows = await self.db.fetch(
            "SELECT other FROM ("
            " SELECT CASE WHEN user_a = $1 THEN user_b ELSE user_a END AS other FROM matches"
            " WHERE user_a = $1 OR user_b = $1"
            " UNION"
            " SELECT CASE WHEN d.user_a = $1 THEN d.user_b ELSE d.user_a END AS other FROM direct_rooms d"
            " WHERE (d.user_a = $1 OR d.user_b = $1)"
            " AND EXISTS (SELECT 1 FROM chat_messages m WHERE m.room_id = d.room_id AND m.user_id = d.user_a)"
            " AND EXISTS (SELECT 1 FROM chat_messages m WHERE m.room_id = d.room_id AND m.user_id = d.user_b)"
            ") c WHERE NOT EXISTS (SELECT 1 FROM blocks b WHERE (b.blocker_id = $1 AND b.blocked_id = c.other)"
            " OR (b.blocker_id = c.other AND b.blocked_id = $1))",
            user_id,
        )
        return [r["other"] for r in rows]

    async def may_see(self, viewer: Identity, user_id: str) -> bool:
        return viewer.is_admin or viewer.user_id == user_id or user_id in await self.contacts(viewer.user_id)
