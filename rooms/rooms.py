"""The room registry: create, get, list, patch, end; live status, viewers, kicks.

Rooms are rows of the ``rooms`` table (store/migrations/0002_domain.sql).
A ``live`` room goes live when its publisher starts (the bus ``media``
channel), gets a new ``stream_id`` each time, and ends when its owner ends it
or its publisher stays away longer than ``settings.room_publisher_grace``.

What this module decides it announces on the bus, channel ``rooms``; the faces
react (api/media.py closes media, signaling/rooms.py tells the sockets):

- ``{"type": "stream_started", "roomId", "streamId", "resumed"}``
- ``{"type": "room_ended", "roomId", "reason"}``
- ``{"type": "viewer_kicked", "roomId", "userId", "until"}``
- ``{"type": "viewers_changed", "roomId", "count"}`` (at most once a second a room)

Per-process state sits behind small interfaces so Redis versions replace it
across nodes: viewer counts (:class:`ViewerCounter`; rooms/redis_state.py) and
the publisher grace, a deadline on :class:`events.timers.TimerService` (in
Redis it outlives the node that set it). :class:`Timers` (closures on this
process's loop) only debounces this node's own announcements.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from auth import ROOM_ID, Identity
from config import Settings
from events.bus import Event, EventBus
from events.timers import InProcessTimers, TimerEvent, TimerService
from rooms.errors import DomainError
from rooms.social import SocialGraph, blocked_between
from store import Database
from store.database import Row

log = logging.getLogger("airwave.rooms")

ROOM_TYPES = ("live", "group", "direct", "call")
CREATABLE_TYPES = ("live", "group")
STATUSES = ("idle", "live", "ended")
MAX_TITLE = 200
MAX_VIEWERS = 1_000_000
MAX_CHAT_TTL = 10 * 365 * 86400  # ten years, in seconds

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class RoomError(DomainError):
    """A rule said no, of the given :class:`~rooms.errors.Category`."""

    def __init__(self, category: str, code: str, message: str) -> None:
        super().__init__(code, message, category)


def room_not_found(room_id: str) -> RoomError:
    return RoomError("not_found", "room_not_found", f"no room {room_id!r}")


@dataclass(frozen=True)
class RoomRecord:
    id: str
    type: str
    title: str
    public: bool
    status: str
    owner_id: str | None
    max_viewers: int | None
    chat_ttl_seconds: float | None
    last_seq: int
    stream_id: str | None
    created_at: float
    live_at: float | None
    ended_at: float | None

    @classmethod
    def from_row(cls, row: Row) -> RoomRecord:
        return cls(
            id=row["id"],
            type=row["type"],
            title=row["title"],
            public=bool(row["public"]),
            status=row["status"],
            owner_id=row["owner_id"],
            max_viewers=row["max_viewers"],
            chat_ttl_seconds=row["chat_ttl_seconds"],
            last_seq=int(row["last_seq"]),
            stream_id=row["stream_id"],
            created_at=row["created_at"],
            live_at=row["live_at"],
            ended_at=row["ended_at"],
        )

    def may_moderate(self, identity: Identity) -> bool:
        return identity.is_admin or (self.owner_id is not None and self.owner_id == identity.user_id)

    def to_json(self, viewer_count: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "title": self.title,
            "public": self.public,
            "status": self.status,
            "ownerId": self.owner_id,
            "viewerCount": viewer_count,
            "createdAt": self.created_at,
            "maxViewers": self.max_viewers,
            "chatTtlSeconds": self.chat_ttl_seconds,
            "streamId": self.stream_id,
            "liveAt": self.live_at,
            "endedAt": self.ended_at,
        }


# ----------------------------------------------------------------------- timers


class Timers(Protocol):
    """Named one-shot timers of this process: scheduling a key again replaces
    its timer. For debouncing only; deadlines go on a :class:`TimerService`."""

    def schedule(self, key: str, delay: float, action: Callable[[], Awaitable[None]]) -> None: ...
    def cancel(self, key: str) -> bool: ...
    def pending(self, key: str) -> bool: ...


class TaskTimers:
    """Timers as tasks of this process (started with the app's ``spawn``)."""

    def __init__(self, spawn: Spawn) -> None:
        self._spawn = spawn
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def schedule(self, key: str, delay: float, action: Callable[[], Awaitable[None]]) -> None:
        self.cancel(key)
        self._tasks[key] = self._spawn(self._fire(key, delay, action), f"timer {key}")

    async def _fire(self, key: str, delay: float, action: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(delay)
        if self._tasks.get(key) is asyncio.current_task():
            del self._tasks[key]
        try:
            await action()
        except Exception:
            log.exception("timer %s failed", key)

    def cancel(self, key: str) -> bool:
        task = self._tasks.pop(key, None)
        if task is None:
            return False
        task.cancel()
        return True

    def pending(self, key: str) -> bool:
        return key in self._tasks


# ---------------------------------------------------------------------- viewers


def user_viewer(user_id: str) -> str:
    """The viewer key of a signed-in user: counted once however many sockets and sessions."""
    return f"user:{user_id}"


def anonymous_viewer(session_id: str) -> str:
    """The viewer key of an anonymous WHEP session: each counts on its own."""
    return f"anon:{session_id}"


class ViewerCounter(Protocol):
    """Who watches which room; one viewer key may join several times (sockets, sessions)."""

    async def join(self, room_id: str, viewer: str) -> int: ...
    async def leave(self, room_id: str, viewer: str) -> int: ...
    async def count(self, room_id: str) -> int: ...
    async def has(self, room_id: str, viewer: str) -> bool: ...
    async def viewers(self, room_id: str) -> list[str]: ...
    async def clear(self, room_id: str) -> None: ...


class InProcessViewerCounter:
    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, int]] = {}

    async def join(self, room_id: str, viewer: str) -> int:
        refs = self._rooms.setdefault(room_id, {})
        refs[viewer] = refs.get(viewer, 0) + 1
        return len(refs)

    async def leave(self, room_id: str, viewer: str) -> int:
        refs = self._rooms.get(room_id)
        if refs is None:
            return 0
        if viewer in refs:
            refs[viewer] -= 1
            if refs[viewer] <= 0:
                del refs[viewer]
        if not refs:
            del self._rooms[room_id]
            return 0
        return len(refs)

    async def count(self, room_id: str) -> int:
        return len(self._rooms.get(room_id, ()))

    async def has(self, room_id: str, viewer: str) -> bool:
        return viewer in self._rooms.get(room_id, ())

    async def viewers(self, room_id: str) -> list[str]:
        return sorted(self._rooms.get(room_id, ()))

    async def clear(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)


class ViewerCountAnnouncer:
    """``viewers_changed`` at most once per ``interval`` a room, trailing edge:
    the last count is always announced, intermediate ones may be skipped."""

    def __init__(
        self,
        counter: ViewerCounter,
        timers: Timers,
        announce: Callable[[str, int], Awaitable[None]],
        interval: float = 1.0,
    ) -> None:
        self.counter = counter
        self.timers = timers
        self.announce = announce
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}  # room -> (monotonic time, count announced)

    def changed(self, room_id: str) -> None:
        key = f"viewers:{room_id}"
        if self.timers.pending(key):
            return
        sent_at, _ = self._last.get(room_id, (-self.interval, 0))
        delay = max(0.0, sent_at + self.interval - time.monotonic())
        self.timers.schedule(key, delay, lambda: self._flush(room_id))

    async def _flush(self, room_id: str) -> None:
        count = await self.counter.count(room_id)
        self._last[room_id] = (time.monotonic(), count)
        await self.announce(room_id, count)

    def forget(self, room_id: str) -> None:
        self.timers.cancel(f"viewers:{room_id}")
        self._last.pop(room_id, None)


# --------------------------------------------------------------------- registry


@dataclass(frozen=True)
class AudienceFacts:
    """What the audience rule reads of the database about one user and one room."""

    banned: bool  # kicked, and the ban still runs
    blocked: bool  # a block either way with the room's owner
    member: bool

    @classmethod
    def from_row(cls, row: Row) -> AudienceFacts:
        return cls(bool(row["banned"]), bool(row["blocked"]), bool(row["member"]))


def _audience_facts(room_id: str, owner_id: str) -> str:
    """The columns of :class:`AudienceFacts` for the user ``$2`` at time ``$3``, given the
    room's id and owner as SQL expressions."""
    return (
        f"EXISTS (SELECT 1 FROM room_bans WHERE room_id = {room_id} AND user_id = $2 "
        f"AND banned_until > $3) AS banned, "
        f"{blocked_between(owner_id, '$2')} AS blocked, "
        f"EXISTS (SELECT 1 FROM room_members WHERE room_id = {room_id} AND user_id = $2) AS member"
    )


def _always_admitted(room: RoomRecord, identity: Identity) -> bool:
    return identity.is_admin or (room.owner_id is not None and room.owner_id == identity.user_id)


def audience_rule(room: RoomRecord, identity: Identity | None, facts: AudienceFacts | None) -> RoomError | None:
    """An admin and the owner always; nobody while kicked (banned) or across a block
    with the owner; then anyone for a public live room, members for the rest.
    Anonymous viewers (``identity`` None) only in a public live room. ``facts`` are
    needed for every other user."""
    if identity is None:
        if room.type == "live" and room.public:
            return None
        return RoomError("forbidden", "not_member", "this room is private")
    if _always_admitted(room, identity):
        return None
    assert facts is not None
    if facts.banned:
        return RoomError("forbidden", "banned", "you were removed from this room and cannot rejoin yet")
    if room.owner_id is not None and facts.blocked:
        return RoomError("forbidden", "blocked", "you cannot join this room")
    if room.type == "live" and room.public:
        return None
    if facts.member:
        return None
    return RoomError("forbidden", "not_member", "only the room's members may be in it")


class RoomRegistry:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        settings: Settings,
        timers: Timers,
        viewers: ViewerCounter | None = None,
        deadlines: TimerService | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.settings = settings
        self.timers = timers
        self.social = SocialGraph(db)
        self.viewers: ViewerCounter = viewers or InProcessViewerCounter()
        self.deadlines: TimerService = deadlines or InProcessTimers()
        self.deadlines.on_fire(self.deadline_fired)
        self.viewer_counts = ViewerCountAnnouncer(self.viewers, timers, self._announce_viewers)

    # -- reading ---------------------------------------------------------------------

    async def get(self, room_id: str) -> RoomRecord | None:
        row = await self.db.fetchrow("SELECT * FROM rooms WHERE id = $1", room_id)
        return RoomRecord.from_row(row) if row else None

    async def require(self, room_id: str) -> RoomRecord:
        room = await self.get(room_id)
        if room is None:
            raise room_not_found(room_id)
        return room

    async def is_member(self, room_id: str, user_id: str) -> bool:
        return (
            await self.db.fetchval(
                "SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2", room_id, user_id
            )
            is not None
        )

    async def audience_refusal(self, room: RoomRecord, identity: Identity | None) -> RoomError | None:
        """The one rule for a room's audience, applied at every door (the room itself,
        participants, WHEP, ``sfu:subscribe``, ``stream:join``, chat history, send and
        typing, gifts, leaderboards, and so edge pulls, which serve the viewers the edge
        admitted): None when ``identity`` (None: anonymous) may be in the room, else why not.
        What the rule reads of the database (a ban, a block with the owner, membership)
        is one query (:func:`audience_rule`)."""
        facts = None
        if identity is not None and not _always_admitted(room, identity):
            row = await self.db.fetchrow(
                f"SELECT {_audience_facts('$1', '$4')}", room.id, identity.user_id, time.time(),
                room.owner_id,
            )
            assert row is not None
            facts = AudienceFacts.from_row(row)
        return audience_rule(room, identity, facts)

    async def may_view(self, room: RoomRecord, identity: Identity | None) -> bool:
        return await self.audience_refusal(room, identity) is None

    async def admit(self, room_id: str, identity: Identity | None) -> RoomRecord:
        """The room, if ``identity`` is in its audience; RoomError (not_found too) otherwise.
        One database round trip: the room and the facts of its audience rule together."""
        if identity is None:
            room = await self.require(room_id)
            facts = None
        else:
            row = await self.db.fetchrow(
                f"SELECT r.*, {_audience_facts('r.id', 'r.owner_id')} FROM rooms r WHERE r.id = $1",
                room_id, identity.user_id, time.time(),
            )
            if row is None:
                raise room_not_found(room_id)
            room, facts = RoomRecord.from_row(row), AudienceFacts.from_row(row)
        refusal = audience_rule(room, identity, facts)
        if refusal is not None:
            raise refusal
        return room

    async def to_json(self, room: RoomRecord) -> dict[str, Any]:
        return room.to_json(await self.viewers.count(room.id))

    async def list(self, status: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int | None]:
        """Public live/group rooms with ``status``; live ones most viewers first."""
        if status not in STATUSES:
            raise RoomError("invalid", "bad_status", f"status must be one of {', '.join(STATUSES)}")
        if status == "live":
            rows = await self.db.fetch(
                "SELECT * FROM rooms WHERE status = 'live' AND public = 1 AND type IN ('live', 'group')"
            )
            rooms = [await self.to_json(RoomRecord.from_row(r)) for r in rows]
            rooms.sort(key=lambda r: (-r["viewerCount"], -(r["liveAt"] or 0.0), r["id"]))
            page = rooms[offset : offset + limit]
            more = offset + limit < len(rooms)
        else:
            rows = await self.db.fetch(
                "SELECT * FROM rooms WHERE status = $1 AND public = 1 AND type IN ('live', 'group') "
                "ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
                status,
                limit + 1,
                offset,
            )
            more = len(rows) > limit
            page = [await self.to_json(RoomRecord.from_row(r)) for r in rows[:limit]]
        return page, (offset + limit if more else None)

    # -- writing ---------------------------------------------------------------------

    async def create(
        self,
        owner: str,
        room_type: str,
        title: str,
        public: bool,
        max_viewers: int | None = None,
        chat_ttl_seconds: float | None = None,
        room_id: str | None = None,
    ) -> RoomRecord:
        if room_type not in CREATABLE_TYPES:
            raise RoomError("invalid", "bad_type", "type must be live or group")
        _check_settings(title, max_viewers, chat_ttl_seconds)
        room_id = room_id or "r_" + secrets.token_hex(8)
        now = time.time()
        async with self.db.transaction() as tx:
            inserted = await tx.execute(
                "INSERT INTO rooms (id, type, title, public, status, owner_id, max_viewers, "
                "chat_ttl_seconds, created_at) VALUES ($1, $2, $3, $4, 'idle', $5, $6, $7, $8) "
                "ON CONFLICT (id) DO NOTHING",
                room_id, room_type, title, int(public), owner, max_viewers, chat_ttl_seconds, now,
            )
            if not inserted:
                raise RoomError("conflict", "room_exists", f"room {room_id!r} exists")
            await tx.execute(
                "INSERT INTO room_members (room_id, user_id, role, joined_at) VALUES ($1, $2, 'owner', $3) "
                "ON CONFLICT DO NOTHING",
                room_id, owner, now,
            )
        return await self.require(room_id)

    async def patch(self, room_id: str, identity: Identity, changes: dict[str, Any]) -> RoomRecord:
        room = await self.require(room_id)
        if not room.may_moderate(identity):
            raise RoomError("forbidden", "forbidden", "only the room's owner may change it")
        title = changes.get("title", room.title)
        public = changes.get("public", room.public)
        max_viewers = changes.get("max_viewers", room.max_viewers)
        ttl = changes.get("chat_ttl_seconds", room.chat_ttl_seconds)
        _check_settings(title, max_viewers, ttl)
        await self.db.execute(
            "UPDATE rooms SET title = $2, public = $3, max_viewers = $4, chat_ttl_seconds = $5 WHERE id = $1",
            room_id, title, int(bool(public)), max_viewers, ttl,
        )
        return await self.require(room_id)

    async def add_member(self, room_id: str, identity: Identity, user_id: str) -> RoomRecord:
        room = await self.require(room_id)
        if room.type != "group":
            raise RoomError("invalid", "not_a_group", "members are added to group rooms only")
        self_join = user_id == identity.user_id and room.public
        if not (self_join or room.may_moderate(identity)):
            raise RoomError("forbidden", "forbidden", "only the owner adds members to a private group")
        await self.db.execute(
            "INSERT INTO room_members (room_id, user_id, role, joined_at) VALUES ($1, $2, 'member', $3) "
            "ON CONFLICT DO NOTHING",
            room_id, user_id, time.time(),
        )
        return room

    async def remove_member(self, room_id: str, identity: Identity, user_id: str) -> bool:
        room = await self.require(room_id)
        if room.type != "group":
            raise RoomError("invalid", "not_a_group", "members leave group rooms only")
        if user_id != identity.user_id and not room.may_moderate(identity):
            raise RoomError("forbidden", "forbidden", "only the owner removes other members")
        if user_id == room.owner_id:
            raise RoomError("invalid", "owner_stays", "the owner cannot leave their own room")
        return await self.db.execute(
            "DELETE FROM room_members WHERE room_id = $1 AND user_id = $2", room_id, user_id
        ) > 0

    async def end(self, room_id: str, identity: Identity | None, reason: str = "ended_by_owner") -> RoomRecord:
        """End a room (owner or admin; ``identity`` None: the server itself)."""
        room = await self.require(room_id)
        if identity is not None and not room.may_moderate(identity):
            raise RoomError("forbidden", "forbidden", "only the room's owner or an admin may end it")
        if room.type not in ("live", "group"):
            raise RoomError("invalid", "not_endable", f"a {room.type} room cannot be ended")
        await self.deadlines.cancel(_grace_key(room_id))
        ended = await self.db.execute(
            "UPDATE rooms SET status = 'ended', ended_at = $2 WHERE id = $1 AND status <> 'ended'",
            room_id, time.time(),
        )
        if ended:
            log.info("room %s ended: %s", room_id, reason)
            await self.bus.publish("rooms", {"type": "room_ended", "roomId": room_id, "reason": reason})
            await self.viewers.clear(room_id)
            self.viewer_counts.forget(room_id)
        return await self.require(room_id)

    # -- kicks and bans ----------------------------------------------------------------

    async def kick(self, room_id: str, identity: Identity, user_id: str) -> float:
        room = await self.require(room_id)
        if not room.may_moderate(identity):
            raise RoomError("forbidden", "forbidden", "only the room's owner or an admin may kick")
        if user_id == room.owner_id:
            raise RoomError("invalid", "cannot_kick_owner", "the owner cannot be kicked from their room")
        until = time.time() + self.settings.kick_ban_seconds
        await self.db.execute(
            "INSERT INTO room_bans (room_id, user_id, banned_until, banned_by) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (room_id, user_id) DO UPDATE SET banned_until = excluded.banned_until, "
            "banned_by = excluded.banned_by",
            room_id, user_id, until, identity.user_id,
        )
        await self.bus.publish(
            "rooms", {"type": "viewer_kicked", "roomId": room_id, "userId": user_id, "until": until}
        )
        return until

    async def banned_until(self, room_id: str, user_id: str) -> float | None:
        until = await self.db.fetchval(
            "SELECT banned_until FROM room_bans WHERE room_id = $1 AND user_id = $2 AND banned_until > $3",
            room_id, user_id, time.time(),
        )
        return float(until) if until is not None else None

    # -- viewers ---------------------------------------------------------------------

    async def viewer_joined(self, room_id: str, viewer: str) -> int:
        count = await self.viewers.join(room_id, viewer)
        self.viewer_counts.changed(room_id)
        return count

    async def viewer_left(self, room_id: str, viewer: str) -> int:
        count = await self.viewers.leave(room_id, viewer)
        self.viewer_counts.changed(room_id)
        return count

    async def on_room_event(self, event: Event) -> None:
        """Bus channel ``rooms``, from any node: forget the viewers of an ended room."""
        if event.get("type") == "room_ended":
            room_id = str(event.get("roomId") or "")
            await self.deadlines.cancel(_grace_key(room_id))
            await self.viewers.clear(room_id)
            self.viewer_counts.forget(room_id)

    async def _announce_viewers(self, room_id: str, count: int) -> None:
        await self.bus.publish("rooms", {"type": "viewers_changed", "roomId": room_id, "count": count})

    # -- media events (bus channel "media") -----------------------------------------------

    async def on_media_event(self, event: Event) -> None:
        kind = event.get("type")
        room_id = str(event.get("roomId") or "")
        user_id = str(event.get("userId") or "")
        if not ROOM_ID.fullmatch(room_id):
            # media of no room of ours: a call's SFU room (``call/{callId}``) made
            # every call a public live room with a stream, for four database and
            # two Redis round trips per party in the call's set-up
            return
        if kind == "publisher_started":
            await self.publisher_started(room_id, user_id)
        elif kind == "publisher_ended":
            await self.publisher_ended(room_id)
        elif kind == "subscriber_joined":
            await self._subscriber_joined(room_id, user_id, str(event.get("sessionId") or ""))
        elif kind == "subscriber_left":
            viewer = user_viewer(user_id) if user_id else anonymous_viewer(str(event.get("sessionId") or ""))
            await self.viewer_left(room_id, viewer)

    async def _subscriber_joined(self, room_id: str, user_id: str, session_id: str) -> None:
        if user_id and await self.banned_until(room_id, user_id) is not None:
            # WHEP cannot ask us first: close the banned viewer's media at once.
            await self.bus.publish(
                "rooms", {"type": "viewer_kicked", "roomId": room_id, "userId": user_id, "until": 0}
            )
        await self.viewer_joined(room_id, user_viewer(user_id) if user_id else anonymous_viewer(session_id))

    async def publisher_started(self, room_id: str, user_id: str) -> None:
        """A publisher is up: create the room if unknown, make it live (a new stream)."""
        resumed = await self.deadlines.cancel(_grace_key(room_id))
        room = await self.get(room_id)
        if room is None:
            now = time.time()
            await self.db.execute(
                "INSERT INTO rooms (id, type, title, public, status, owner_id, created_at) "
                "VALUES ($1, 'live', $1, 1, 'idle', $2, $3) ON CONFLICT (id) DO NOTHING",
                room_id, user_id or None, now,
            )
            if user_id:
                await self.db.execute(
                    "INSERT INTO room_members (room_id, user_id, role, joined_at) "
                    "VALUES ($1, $2, 'owner', $3) ON CONFLICT DO NOTHING",
                    room_id, user_id, now,
                )
            room = await self.require(room_id)
        if room.type != "live":
            return  # calls and chats carry media of their own; not a broadcast
        if room.status == "live" and resumed:
            await self.bus.publish(
                "rooms",
                {"type": "stream_started", "roomId": room_id, "streamId": room.stream_id, "resumed": True},
            )
            return
        stream_id = "s_" + secrets.token_hex(8)
        updated = await self.db.execute(
            "UPDATE rooms SET status = 'live', stream_id = $2, live_at = $3, ended_at = NULL "
            "WHERE id = $1 AND type = 'live'",
            room_id, stream_id, time.time(),
        )
        if updated:
            log.info("room %s live: stream %s", room_id, stream_id)
            await self.bus.publish(
                "rooms", {"type": "stream_started", "roomId": room_id, "streamId": stream_id, "resumed": False}
            )

    async def publisher_ended(self, room_id: str) -> None:
        room = await self.get(room_id)
        if room is None or room.type != "live" or room.status != "live":
            return
        grace = self.settings.room_publisher_grace
        if grace <= 0:
            await self._publisher_gone(room_id, room.stream_id)
        else:
            await self.deadlines.schedule(
                _grace_key(room_id), time.time() + grace,
                {"type": "publisher_grace", "roomId": room_id, "streamId": room.stream_id},
            )

    async def deadline_fired(self, event: TimerEvent) -> None:
        if event.get("type") == "publisher_grace":
            await self._publisher_gone(str(event.get("roomId", "")), event.get("streamId"))

    async def _publisher_gone(self, room_id: str, stream_id: Any) -> None:
        """The grace ran out: end the room if it is still live on the same stream."""
        current = await self.get(room_id)
        if current is not None and current.status == "live" and current.stream_id == stream_id:
            await self.end(room_id, None, reason="publisher_gone")


def _grace_key(room_id: str) -> str:
    return f"grace:{room_id}"


def _check_settings(title: Any, max_viewers: Any, ttl: Any) -> None:
    if not isinstance(title, str) or len(title) > MAX_TITLE:
        raise RoomError("invalid", "bad_title", f"title must be a string of at most {MAX_TITLE} characters")
    if max_viewers is not None and (
        isinstance(max_viewers, bool) or not isinstance(max_viewers, int) or not 1 <= max_viewers <= MAX_VIEWERS
    ):
        raise RoomError("invalid", "bad_max_viewers", f"maxViewers must be an integer from 1 to {MAX_VIEWERS}")
    if ttl is not None and (
        isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_CHAT_TTL
    ):  # NaN fails the comparison too
        raise RoomError("invalid", "bad_chat_ttl", f"chatTtlSeconds must be a number above 0, at most {MAX_CHAT_TTL}")
