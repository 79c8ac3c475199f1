"""1:1 calls: the state machine ``ringing -> active -> ended``, its rules and timers.

Every transition is one conditional UPDATE on the ``calls`` row
(``... WHERE id = $1 AND status = $2``), so a transition happens once even when
two things race for it (a timer and a hang-up; later, two nodes). Timers carry
the call's ``extensions`` count as the version of its deadline: a timer set
before an extension finds a different count and does nothing.

Busy is atomic: a call takes a :class:`CallLocks` entry for both parties at
once ("in call X"; in Redis across nodes), so two simultaneous calls to one
callee cannot both ring; the entry goes when the call ends.

What happened goes on the bus, channel ``calls`` (see :data:`CALLS_CHANNEL`);
the faces tell the clients and close the media. rooms/ knows nothing of
sockets or media sessions.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from config import Settings
from events.bus import EventBus
from events.timers import TimerEvent, TimerService
from rooms.errors import Category, DomainError
from rooms.social import SocialGraph
from store import Database
from webhooks.outbox import Outbox

log = logging.getLogger("airwave.calls")

CALLS_CHANNEL = "calls"
MEDIA_KINDS = ("audio", "video")
LIVE_STATUSES = ("ringing", "active")
END_REASONS = (
    "hangup", "rejected", "missed", "busy", "timeout", "disconnected", "server_shutdown", "suspended",
)
MAX_ID_LENGTH = 128
MAX_REJECT_REASON = 64

CALLS_ENDED = Counter("airwave_calls_ended_total", "Calls ended, by end reason", ["reason"])
CALLS_ACTIVE = Gauge("airwave_calls_active", "Answered calls not yet ended (answered here minus ended here)")
CALL_SETUP_SECONDS = Histogram(
    "airwave_calls_setup_seconds",
    "From call:answer until both parties' media is connected to the server",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30),
)
for _reason in END_REASONS:
    CALLS_ENDED.labels(_reason)


class CallLocks(Protocol):
    """Which call each user is in, taken for both parties of a call at once."""

    async def holder(self, user_id: str) -> str | None:
        """The call id the user's entry names, if any."""
        ...

    async def take(self, call_id: str, caller_id: str, callee_id: str, stale: dict[str, str]) -> int:
        """Both entries for ``call_id``, or neither: 0 taken, 1 the caller holds
        another, 2 the callee does. ``stale`` maps a user to a call id that is
        over: an entry naming it may be taken over."""
        ...

    async def release(self, call_id: str, *users: str) -> None:
        """Drop the users' entries that name ``call_id``."""
        ...


class InProcessCallLocks:
    def __init__(self) -> None:
        self._held: dict[str, str] = {}

    async def holder(self, user_id: str) -> str | None:
        return self._held.get(user_id)

    async def take(self, call_id: str, caller_id: str, callee_id: str, stale: dict[str, str]) -> int:
        for code, user in ((1, caller_id), (2, callee_id)):
            held = self._held.get(user)
            if held is not None and held != stale.get(user):
                return code
        self._held[caller_id] = self._held[callee_id] = call_id
        return 0

    async def release(self, call_id: str, *users: str) -> None:
        for user in users:
            if self._held.get(user) == call_id:
                del self._held[user]


class PartySockets(Protocol):
    """How many sockets each party has in a call's audience, on every node."""

    async def joined(self, call_id: str, user_id: str) -> int: ...
    async def left(self, call_id: str, user_id: str) -> int:
        """One socket fewer; the party's sockets left in the audience on any node."""
        ...

    async def clear(self, call_id: str, *users: str) -> None: ...


class InProcessPartySockets:
    def __init__(self) -> None:
        self._sockets: dict[tuple[str, str], int] = {}

    async def joined(self, call_id: str, user_id: str) -> int:
        key = (call_id, user_id)
        self._sockets[key] = self._sockets.get(key, 0) + 1
        return self._sockets[key]

    async def left(self, call_id: str, user_id: str) -> int:
        key = (call_id, user_id)
        left = self._sockets.get(key, 0) - 1
        if left <= 0:
            self._sockets.pop(key, None)
            return 0
        self._sockets[key] = left
        return left

    async def clear(self, call_id: str, *users: str) -> None:
        for user in users:
            self._sockets.pop((call_id, user), None)


_CATEGORIES: dict[str, Category] = {
    "user_not_found": Category.NOT_FOUND,
    "call_not_found": Category.NOT_FOUND,
    "blocked": Category.FORBIDDEN,
    "not_matched": Category.FORBIDDEN,
    "forbidden": Category.FORBIDDEN,
    "not_callee": Category.FORBIDDEN,
    "caller_busy": Category.CONFLICT,
    "call_ended": Category.CONFLICT,
    "already_answered": Category.CONFLICT,
    "not_active": Category.CONFLICT,
}


class CallError(DomainError):
    """A request the rules refuse; nothing changed. ``code`` is stable for clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, _CATEGORIES.get(code, Category.INVALID))


@dataclass(frozen=True)
class Call:
    id: str
    caller_id: str
    callee_id: str
    media: str
    status: str
    end_reason: str | None
    created_at: float
    answered_at: float | None
    ended_at: float | None
    ends_at: float | None
    duration: float
    extensions: int
    upgraded_at: float | None
    extend_by_caller: bool
    extend_by_callee: bool
    upgrade_by_caller: bool
    upgrade_by_callee: bool

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Call:
        return cls(
            id=row["id"],
            caller_id=row["caller_id"],
            callee_id=row["callee_id"],
            media=row["media"],
            status=row["status"],
            end_reason=row["end_reason"],
            created_at=float(row["created_at"]),
            answered_at=_float_or_none(row["answered_at"]),
            ended_at=_float_or_none(row["ended_at"]),
            ends_at=_float_or_none(row["ends_at"]),
            duration=float(row["duration"] or 0.0),
            extensions=int(row["extensions"] or 0),
            upgraded_at=_float_or_none(row["upgraded_at"]),
            extend_by_caller=bool(row["extend_by_caller"]),
            extend_by_callee=bool(row["extend_by_callee"]),
            upgrade_by_caller=bool(row["upgrade_by_caller"]),
            upgrade_by_callee=bool(row["upgrade_by_callee"]),
        )

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def parties(self) -> tuple[str, str]:
        return (self.caller_id, self.callee_id)

    def is_party(self, user_id: str) -> bool:
        return user_id in self.parties

    def other(self, user_id: str) -> str:
        return self.callee_id if user_id == self.caller_id else self.caller_id

    def to_json(self) -> dict[str, Any]:
        """The call record as REST and socket clients see it."""
        return {
            "id": self.id,
            "callerId": self.caller_id,
            "calleeId": self.callee_id,
            "media": self.media,
            "status": self.status,
            "endReason": self.end_reason,
            "createdAt": self.created_at,
            "answeredAt": self.answered_at,
            "endedAt": self.ended_at,
            "endsAt": self.ends_at,
            "duration": self.duration,
            "extensions": self.extensions,
            "upgradedAt": self.upgraded_at,
        }


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


# A transition to ended; $5 optionally pins the deadline version (timeouts).
_END_SQL = (
    "UPDATE calls SET status = 'ended', end_reason = $3, ended_at = $4, "
    "duration = CASE WHEN answered_at IS NULL THEN 0 ELSE $4 - answered_at END "
    "WHERE id = $1 AND status = $2"
)


class CallService:
    """The rules of 1:1 calls. One per process; state lives in the ``calls`` table."""

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        social: SocialGraph,
        settings: Settings,
        timers: TimerService,
        *,
        locks: CallLocks | None = None,
        party_sockets: PartySockets | None = None,
        clock: Callable[[], float] = time.time,
        outbox: Outbox | None = None,
        is_online: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.social = social
        self.settings = settings
        self.timers = timers
        self.locks: CallLocks = locks or InProcessCallLocks()
        self.party_sockets: PartySockets = party_sockets or InProcessPartySockets()
        self.clock = clock
        # Webhooks: call.* events written in the transaction of each transition;
        # ``is_online`` says whether the callee has a live socket (call.ringing).
        self.outbox = outbox
        self.is_online = is_online
        timers.on_fire(self.timer_fired)

    # ------------------------------------------------------------------ reading
    async def get(self, call_id: Any) -> Call | None:
        if not _valid_id(call_id):
            return None
        row = await self.db.fetchrow("SELECT * FROM calls WHERE id = $1", call_id)
        return Call.from_row(row) if row else None

    async def require(self, call_id: Any, user_id: str) -> Call:
        """The call, if ``user_id`` is one of its parties."""
        if not _valid_id(call_id):
            raise CallError("bad_request", "callId must be a non-empty string")
        call = await self.get(call_id)
        if call is None:
            raise CallError("call_not_found", "no such call")
        if not call.is_party(user_id):
            raise CallError("forbidden", "this call belongs to someone else")
        return call

    async def live_calls_of(self, user_id: str) -> list[Call]:
        rows = await self.db.fetch(
            "SELECT * FROM calls WHERE status IN ('ringing', 'active') "
            "AND (caller_id = $1 OR callee_id = $1) ORDER BY created_at",
            user_id,
        )
        return [Call.from_row(r) for r in rows]

    async def history(self, user_id: str, limit: int, before: str | None = None) -> tuple[list[Call], str | None]:
        """The user's calls (as caller or callee), newest first; ``before`` is a call id
        from a previous page. Returns the page and the cursor of the next one."""
        if before is not None:
            anchor = await self.require(before, user_id)
            rows = await self.db.fetch(
                "SELECT * FROM calls WHERE (caller_id = $1 OR callee_id = $1) "
                "AND (created_at < $2 OR (created_at = $2 AND id < $3)) "
                "ORDER BY created_at DESC, id DESC LIMIT $4",
                user_id,
                anchor.created_at,
                anchor.id,
                limit + 1,
            )
        else:
            rows = await self.db.fetch(
                "SELECT * FROM calls WHERE (caller_id = $1 OR callee_id = $1) "
                "ORDER BY created_at DESC, id DESC LIMIT $2",
                user_id,
                limit + 1,
            )
        calls = [Call.from_row(r) for r in rows[:limit]]
        next_cursor = calls[-1].id if len(rows) > limit and calls else None
        return calls, next_cursor

    def rings_until(self, call: Call) -> float:
        return call.created_at + self.settings.ring_timeout

    # ---------------------------------------------------------------- requests
    async def initiate(self, caller_id: str, callee_id: Any, media: Any, *, stun_host: str | None = None) -> Call:
        """Place a call. A callee already in a call makes it end at once as ``busy``.

        ``stun_host`` is passed through on the ``call_ringing`` event for the face
        that builds the callee's ICE servers."""
        if not _valid_id(callee_id):
            raise CallError("bad_request", "'to' must be a user id")
        if media not in MEDIA_KINDS:
            raise CallError("bad_request", "'media' must be 'audio' or 'video'")
        if callee_id == caller_id:
            raise CallError("cannot_call_self", "you cannot call yourself")
        if not await self.social.exists(callee_id):
            raise CallError("user_not_found", "no such user")
        if await self.social.is_blocked(caller_id, callee_id):
            raise CallError("blocked", "calls between these users are blocked")
        if self.settings.require_match and not await self.social.are_matched(caller_id, callee_id):
            raise CallError("not_matched", "you can only call your matches")
        if await self.live_calls_of(caller_id):
            raise CallError("caller_busy", "you are already in a call")
        now = self.clock()
        call_id = uuid.uuid4().hex
        busy = bool(await self.live_calls_of(callee_id))
        if not busy:
            row = await self.db.fetchrow(
                "INSERT INTO calls (id, caller_id, callee_id, media, status, created_at) "
                "VALUES ($1, $2, $3, $4, 'ringing', $5) RETURNING *",
                call_id, caller_id, callee_id, media, now,
            )
            assert row is not None
            taken = await self._lock_parties(call_id, caller_id, callee_id)
            if taken == 1:
                await self.db.execute("DELETE FROM calls WHERE id = $1", call_id)
                raise CallError("caller_busy", "you are already in a call")
            busy = taken == 2
            if busy:  # lost the race for the callee: this call is over before it rang
                await self.db.execute("DELETE FROM calls WHERE id = $1", call_id)
        if busy:
            busy_call = await self._write(
                "call.ended",
                "INSERT INTO calls (id, caller_id, callee_id, media, status, end_reason, created_at, ended_at) "
                "VALUES ($1, $2, $3, $4, 'ended', 'busy', $5, $5) RETURNING *",
                call_id, caller_id, callee_id, media, now,
            )
            assert busy_call is not None
            call = busy_call
            CALLS_ENDED.labels("busy").inc()
            await self._announce_ended(call)
            return call
        call = Call.from_row(row)
        await self._ringing_webhook(call)
        await self.timers.schedule(
            _ring_key(call.id), self.rings_until(call), {"type": "ring_timeout", "callId": call.id}
        )
        await self._publish(
            "call_ringing", call, media=call.media, ringsUntil=self.rings_until(call), stunHost=stun_host
        )
        return call

    async def _lock_parties(self, call_id: str, caller_id: str, callee_id: str) -> int:
        """Take both parties' call locks; an entry naming a call that is over is taken over."""
        stale: dict[str, str] = {}
        taken = 0
        for _ in range(3):
            taken = await self.locks.take(call_id, caller_id, callee_id, stale)
            if taken == 0:
                return 0
            user = caller_id if taken == 1 else callee_id
            held = await self.locks.holder(user)
            if held is None:
                continue  # released meanwhile
            other = await self.get(held)
            if other is not None and other.live:
                return taken
            stale[user] = held
        return taken

    async def answer(self, call_id: Any, user_id: str) -> Call:
        call = await self.require(call_id, user_id)
        if user_id != call.callee_id:
            raise CallError("not_callee", "only the callee can answer")
        self._check_not_over(call, "ringing", "already_answered", "the call was answered already")
        now = self.clock()
        ends_at = now + self.settings.call_duration if self.settings.call_duration > 0 else None
        answered_call = await self._write(
            "call.answered",
            "UPDATE calls SET status = 'active', answered_at = $2, ends_at = $3 "
            "WHERE id = $1 AND status = 'ringing' RETURNING *",
            call.id, now, ends_at,
        )
        if answered_call is None:  # lost a race with a timer or the caller
            latest = await self.require(call.id, user_id)
            self._check_not_over(latest, "ringing", "already_answered", "the call was answered already")
            raise CallError("call_ended", "the call has ended")
        answered = answered_call
        await self.timers.cancel(_ring_key(answered.id))
        CALLS_ACTIVE.inc()
        await self._schedule_deadline(answered)
        await self._publish("call_answered", answered, answeredAt=answered.answered_at, endsAt=answered.ends_at,
                            media=answered.media)
        return answered

    async def reject(self, call_id: Any, user_id: str, reason: Any = None) -> Call:
        call = await self.require(call_id, user_id)
        if user_id != call.callee_id:
            raise CallError("not_callee", "only the callee can reject; the caller ends with call:end")
        if reason is None:
            reason = "declined"
        if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REJECT_REASON:
            raise CallError("bad_request", f"'reason' must be a string of 1-{MAX_REJECT_REASON} characters")
        self._check_not_over(call, "ringing", "already_answered", "an answered call ends with call:end")
        ended = await self._end_from(call.id, "ringing", "rejected", reject_reason=reason)
        if ended is None:
            raise CallError("call_ended", "the call has ended")
        return ended

    async def hang_up(self, call_id: Any, user_id: str) -> Call:
        """``call:end``: the caller cancels a ringing call, either party ends an
        active one (``hangup``); the callee ending a ringing call rejects it."""
        call = await self.require(call_id, user_id)
        for _ in range(3):
            if call.status == "ended":
                raise CallError("call_ended", "the call has ended")
            if call.status == "ringing" and user_id == call.callee_id:
                ended = await self._end_from(call.id, "ringing", "rejected", reject_reason="declined")
            else:
                ended = await self._end_from(call.id, call.status, "hangup")
            if ended is not None:
                return ended
            call = await self.require(call.id, user_id)  # it changed under us: look again
        raise CallError("call_ended", "the call has ended")

    async def request_extension(self, call_id: Any, user_id: str) -> tuple[Call, bool]:
        """One party asks; when both have asked (within the warning window) the
        call's end moves by ``call_extension``. Returns (call, extended)."""
        call = await self.require(call_id, user_id)
        self._check_active(call)
        if call.ends_at is None:
            raise CallError("unlimited_call", "this call has no time limit")
        if call.extensions >= self.settings.call_max_extensions:
            raise CallError("extension_limit", f"at most {self.settings.call_max_extensions} extensions per call")
        now = self.clock()
        opens_at = call.ends_at - self.settings.call_warning_before
        if now < opens_at:
            raise CallError(
                "extension_not_open",
                f"extensions can be asked for in the last {self.settings.call_warning_before:g} s of a call",
            )
        column = "extend_by_caller" if user_id == call.caller_id else "extend_by_callee"
        asked = await self.db.fetchrow(
            f"UPDATE calls SET {column} = 1 WHERE id = $1 AND status = 'active' AND extensions = $2 RETURNING id",
            call.id, call.extensions,
        )
        if asked is None:  # ended or extended a moment ago
            latest = await self.require(call.id, user_id)
            self._check_active(latest)
            return latest, False
        extended_call = await self._write(
            "call.extended",
            "UPDATE calls SET ends_at = ends_at + $2, extensions = extensions + 1, "
            "extend_by_caller = 0, extend_by_callee = 0 "
            "WHERE id = $1 AND status = 'active' AND extensions = $3 AND extensions < $4 "
            "AND extend_by_caller = 1 AND extend_by_callee = 1 RETURNING *",
            call.id, self.settings.call_extension, call.extensions, self.settings.call_max_extensions,
        )
        if extended_call is None:
            await self._publish("call_extend_requested", call, by=user_id)
            latest = await self.get(call.id)
            return (latest or call), False
        extended = extended_call
        await self._schedule_deadline(extended)
        await self._publish("call_extended", extended, endsAt=extended.ends_at, extensions=extended.extensions)
        return extended, True

    async def request_upgrade(self, call_id: Any, user_id: str) -> tuple[Call, bool]:
        """Audio to video: one party asks, the other agrees by asking too."""
        call = await self.require(call_id, user_id)
        self._check_active(call)
        if call.media != "audio":
            raise CallError("already_video", "this call already has video")
        column = "upgrade_by_caller" if user_id == call.caller_id else "upgrade_by_callee"
        asked = await self.db.fetchrow(
            f"UPDATE calls SET {column} = 1 WHERE id = $1 AND status = 'active' AND media = 'audio' RETURNING id",
            call.id,
        )
        if asked is None:
            latest = await self.require(call.id, user_id)
            self._check_active(latest)
            return latest, latest.media == "video"
        row = await self.db.fetchrow(
            "UPDATE calls SET media = 'video', upgraded_at = $2 WHERE id = $1 AND status = 'active' "
            "AND media = 'audio' AND upgrade_by_caller = 1 AND upgrade_by_callee = 1 RETURNING *",
            call.id, self.clock(),
        )
        if row is None:
            await self._publish("call_upgrade_requested", call, by=user_id)
            latest = await self.get(call.id)
            return (latest or call), False
        upgraded = Call.from_row(row)
        await self._publish("call_upgraded", upgraded, media=upgraded.media)
        return upgraded, True

    # ----------------------------------------------------- presence of parties
    async def party_away(self, call_id: str, user_id: str) -> None:
        """The party's connection dropped: the call ends as ``disconnected``
        unless :meth:`party_back` comes within ``reconnect_grace``."""
        await self.timers.schedule(
            _grace_key(call_id, user_id),
            self.clock() + self.settings.reconnect_grace,
            {"type": "reconnect_grace", "callId": call_id, "userId": user_id},
        )

    async def party_back(self, call_id: str, user_id: str) -> None:
        await self.timers.cancel(_grace_key(call_id, user_id))

    async def party_socket_joined(self, call_id: str, user_id: str) -> None:
        """A socket of the party (on any node) joined the call's audience."""
        await self.party_sockets.joined(call_id, user_id)

    async def party_socket_left(self, call_id: str, user_id: str) -> int:
        """A socket of the party left; how many it still has there on any node."""
        return await self.party_sockets.left(call_id, user_id)

    # ----------------------------------------------------------------- endings
    async def end(self, call_id: str, reason: str) -> Call | None:
        """End a live call for ``reason`` (server side: shutdown, moderation).
        None when it was not live."""
        if reason not in END_REASONS:
            raise ValueError(f"unknown end reason {reason!r}")
        for _ in range(3):
            call = await self.get(call_id)
            if call is None or not call.live:
                return None
            ended = await self._end_from(call.id, call.status, reason)
            if ended is not None:
                return ended
        return None

    async def end_live_calls(self, reason: str, call_ids: set[str] | None = None) -> list[Call]:
        """End every live call (or those in ``call_ids``)."""
        rows = await self.db.fetch("SELECT * FROM calls WHERE status IN ('ringing', 'active')")
        ended = []
        for row in rows:
            call = Call.from_row(row)
            if call_ids is not None and call.id not in call_ids:
                continue
            done = await self.end(call.id, reason)
            if done is not None:
                ended.append(done)
        return ended

    # ------------------------------------------------------------------ timers
    async def timer_fired(self, event: TimerEvent) -> None:
        kind = event.get("type")
        if kind == "ring_timeout":
            # the conditional UPDATE of the end is the check: no read before it
            await self._end_from(str(event.get("callId")), "ringing", "missed")
            return
        call = await self.get(event.get("callId"))
        if call is None or not call.live:
            return
        if kind == "call_warning":
            if call.status == "active" and call.extensions == event.get("extensions") and call.ends_at:
                remaining = round(max(0.0, call.ends_at - self.clock()), 3)
                await self._publish("call_warning", call, remaining=remaining, endsAt=call.ends_at)
        elif kind == "call_timeout":
            if call.status == "active" and call.extensions == event.get("extensions") and call.ends_at:
                ended_at = min(self.clock(), call.ends_at)
                await self._end_from(call.id, "active", "timeout", ended_at=ended_at, extensions=call.extensions)
        elif kind == "reconnect_grace":
            await self.end(call.id, "disconnected")
        else:
            log.warning("unknown call timer %r", kind)

    # --------------------------------------------------------------- internals
    @staticmethod
    def _check_not_over(call: Call, expected: str, code: str, message: str) -> None:
        if call.status == "ended":
            raise CallError("call_ended", "the call has ended")
        if call.status != expected:
            raise CallError(code, message)

    @staticmethod
    def _check_active(call: Call) -> None:
        if call.status == "ended":
            raise CallError("call_ended", "the call has ended")
        if call.status != "active":
            raise CallError("not_active", "the call has not been answered")

    async def _schedule_deadline(self, call: Call) -> None:
        """The warning and the timeout of the call's current end (replacing earlier ones)."""
        if call.ends_at is None:
            return
        version = {"callId": call.id, "extensions": call.extensions}
        if self.settings.call_warning_before > 0:
            await self.timers.schedule(
                _warning_key(call.id),
                call.ends_at - self.settings.call_warning_before,
                {"type": "call_warning", **version},
            )
        await self.timers.schedule(_timeout_key(call.id), call.ends_at, {"type": "call_timeout", **version})

    async def _end_from(
        self,
        call_id: str,
        status: str,
        reason: str,
        *,
        ended_at: float | None = None,
        extensions: int | None = None,
        reject_reason: str | None = None,
    ) -> Call | None:
        """The one transition to ended: acts only if the row is still in ``status``
        (and at deadline version ``extensions`` when given)."""
        at = self.clock() if ended_at is None else ended_at
        if extensions is None:
            ended_call = await self._write("call.ended", _END_SQL + " RETURNING *", call_id, status, reason, at)
        else:
            ended_call = await self._write(
                "call.ended", _END_SQL + " AND extensions = $5 RETURNING *", call_id, status, reason, at,
                extensions,
            )
        if ended_call is None:
            return None
        call = ended = ended_call
        await self.locks.release(call.id, call.caller_id, call.callee_id)
        await self.party_sockets.clear(call.id, call.caller_id, call.callee_id)
        await self.timers.cancel(_ring_key(call.id), _warning_key(call.id), _timeout_key(call.id),
                                 _grace_key(call.id, call.caller_id), _grace_key(call.id, call.callee_id))
        CALLS_ENDED.labels(reason).inc()
        if status == "active":
            CALLS_ACTIVE.dec()
        await self._announce_ended(ended, reject_reason=reject_reason)
        return ended

    async def _write(self, event: str, sql: str, *args: Any) -> Call | None:
        """One transition (``sql`` returns the row, or nothing when it lost a race) and
        its webhook event, committed together."""
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(sql, *args)
            if row is None:
                return None
            call = Call.from_row(row)
            if self.outbox is not None:
                data = call.to_json()
                if event == "call.ended":
                    data["reason"] = call.end_reason
                await self.outbox.add(tx, event, f"call:{call.id}", data)
        return call

    async def _ringing_webhook(self, call: Call) -> None:
        """call.ringing once the call holds both parties, with whether the callee has a
        live socket anywhere (false: the app's backend sends a push)."""
        if self.outbox is None or not self.outbox.enabled:
            return
        try:
            online = await self.is_online(call.callee_id) if self.is_online is not None else None
            data = {**call.to_json(), "ringsUntil": self.rings_until(call), "calleeOnline": online}
            async with self.db.transaction() as tx:
                await self.outbox.add(tx, "call.ringing", f"call:{call.id}", data)
        except Exception:  # the call rings on the sockets all the same
            log.exception("call.ringing of %s could not be written", call.id)

    async def _announce_ended(self, call: Call, *, reject_reason: str | None = None) -> None:
        extra: dict[str, Any] = {"reason": call.end_reason, "duration": call.duration, "endedAt": call.ended_at}
        if reject_reason is not None:
            extra["rejectReason"] = reject_reason
        await self._publish("call_ended", call, **extra)

    async def _publish(self, kind: str, call: Call, **fields: Any) -> None:
        await self.bus.publish(
            CALLS_CHANNEL,
            {"type": kind, "callId": call.id, "callerId": call.caller_id, "calleeId": call.callee_id, **fields},
        )


def _ring_key(call_id: str) -> str:
    return f"call:{call_id}:ring"


def _warning_key(call_id: str) -> str:
    return f"call:{call_id}:warning"


def _timeout_key(call_id: str) -> str:
    return f"call:{call_id}:timeout"


def _grace_key(call_id: str, user_id: str) -> str:
    return f"call:{call_id}:grace:{user_id}"


__all__ = [
    "CALLS_CHANNEL",
    "CALL_SETUP_SECONDS",
    "END_REASONS",
    "MEDIA_KINDS",
    "Call",
    "CallError",
    "CallLocks",
    "CallService",
    "InProcessCallLocks",
    "InProcessPartySockets",
    "PartySockets",
]
