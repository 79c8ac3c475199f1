"""Chat that is kept: messages numbered per room, history, read positions, typing.

A message is stored before anyone hears of it: ``send`` returns only after the
transaction that numbered and inserted it has committed. ``seq`` comes from
``UPDATE rooms SET last_seq = last_seq + 1 ... RETURNING last_seq`` in that same
transaction, so it is gap-free and unique under concurrent senders on both
backends and across nodes (the row lock serialises them). A retried
``clientId`` (unique per room, user and clientId) returns the stored message.

Who may chat: live rooms, anyone with a token who is not banned from the room;
direct, group and call rooms, their members only; two users who have blocked
each other cannot message each other in their direct room, nor open one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from auth import Identity
from config import Settings
from rooms.rate_limit import RateLimiter
from rooms.rooms import RoomError, RoomRecord, RoomRegistry, Timers, room_not_found
from rooms.social import SocialGraph, ordered_pair
from store import Database, Queries
from store.database import Row

log = logging.getLogger("airwave.chat")

MAX_CLIENT_ID = 128
MAX_PAGE = 100
DEFAULT_PAGE = 50
TYPING_EXPIRES = 5.0
SWEEP_BATCH = 500

_COLUMNS = "id, seq, room_id, user_id, text, client_id, created_at, reply_to, attachment"
MAX_URL = 2048
MAX_ATTACHMENT_BYTES = 2**40
_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$")


def check_attachment(value: Any) -> dict[str, Any] | None:
    """A reference to a file the app uploaded elsewhere: ``{url, mime, size}``,
    validated and stored as given; airwave never fetches it."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"url", "mime", "size"}:
        raise RoomError("invalid", "bad_attachment", "attachment is {url, mime, size} and nothing else")
    url, mime, size = value["url"], value["mime"], value["size"]
    if not isinstance(url, str) or not url.startswith("https://") or len(url) > MAX_URL or any(
        c.isspace() for c in url
    ):
        raise RoomError("invalid", "bad_attachment", f"attachment.url is an https:// URL of at most {MAX_URL} characters")
    if not isinstance(mime, str) or not _MIME.match(mime.lower()):
        raise RoomError("invalid", "bad_attachment", "attachment.mime is a media type such as image/jpeg")
    if isinstance(size, bool) or not isinstance(size, int) or not (0 < size <= MAX_ATTACHMENT_BYTES):
        raise RoomError("invalid", "bad_attachment", "attachment.size is the file's size in bytes")
    return {"url": url, "mime": mime.lower(), "size": size}


@dataclass(frozen=True)
class ChatMessage:
    id: str
    seq: int
    room_id: str
    user_id: str
    text: str
    created_at: float
    client_id: str | None
    reply_to: str | None = None
    attachment: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Row) -> ChatMessage:
        return cls(
            id=row["id"],
            seq=int(row["seq"]),
            room_id=row["room_id"],
            user_id=row["user_id"],
            text=row["text"],
            created_at=row["created_at"],
            client_id=row["client_id"],
            reply_to=row.get("reply_to"),
            attachment=json.loads(row["attachment"]) if row.get("attachment") else None,
        )

    def ack(self) -> dict[str, Any]:
        return {"id": self.id, "seq": self.seq, "createdAt": self.created_at}

    def to_json(self) -> dict[str, Any]:
        """The ``chat:message`` payload."""
        return {
            "id": self.id,
            "seq": self.seq,
            "roomId": self.room_id,
            "userId": self.user_id,
            "text": self.text,
            "createdAt": self.created_at,
            "clientId": self.client_id,
            **({"replyTo": self.reply_to} if self.reply_to else {}),
            **({"attachment": self.attachment} if self.attachment else {}),
        }

    def to_history(self) -> dict[str, Any]:
        """A message in history pages: the ``chat:message`` payload without ``clientId``."""
        history = self.to_json()
        del history["clientId"]
        return history


class _AlreadyStored(Exception):
    """Rolls the numbering back when the clientId turned out to be stored already."""


def direct_room_id(a: str, b: str) -> str:
    user_a, user_b = ordered_pair(a, b)
    return "dm_" + hashlib.sha256(f"{user_a}\n{user_b}".encode()).hexdigest()[:32]


class ChatService:
    def __init__(
        self,
        db: Database,
        registry: RoomRegistry,
        social: SocialGraph,
        settings: Settings,
        limiter: RateLimiter,
    ) -> None:
        self.db = db
        self.registry = registry
        self.social = social
        self.settings = settings
        self.limiter = limiter
        # Called inside the transaction that stores a new message (webhooks write
        # chat.message there); set by whoever wires the outbox.
        self.on_stored: Callable[[Queries, ChatMessage, RoomRecord], Awaitable[None]] | None = None

    # -- access ----------------------------------------------------------------------

    async def members(self, room_id: str) -> list[str]:
        rows = await self.db.fetch("SELECT user_id FROM room_members WHERE room_id = $1", room_id)
        return [r["user_id"] for r in rows]

    async def check_access(self, room_id: str, identity: Identity, *, write: bool) -> RoomRecord:
        """The room, if ``identity`` may read (or write) its chat; RoomError otherwise."""
        room = await self.registry.admit(room_id, identity)  # the room's audience rule
        if room.type == "live":
            return room
        if write and not await self.registry.is_member(room_id, identity.user_id):
            raise RoomError("forbidden", "not_member", "only the room's members may use its chat")
        if room.type == "direct" and write:
            others = [m for m in await self.members(room_id) if m != identity.user_id]
            for other in others:
                if await self.social.is_blocked(identity.user_id, other):
                    raise RoomError("forbidden", "blocked", "you cannot message this user")
        return room

    # -- direct chats ------------------------------------------------------------------

    async def open_direct(self, identity: Identity, other: str) -> tuple[RoomRecord, bool]:
        """The direct room of two users, created on first use; (room, created)."""
        me = identity.user_id
        if not isinstance(other, str) or not other or len(other) > 256:
            raise RoomError("invalid", "bad_user", "userId must be a user id")
        if other == me:
            raise RoomError("invalid", "self_chat", "a direct chat needs another user")
        if not await self.social.exists(other):
            raise RoomError("not_found", "user_not_found", f"no user {other!r}")
        if await self.social.is_blocked(me, other):
            raise RoomError("forbidden", "blocked", "you cannot message this user")
        room_id = direct_room_id(me, other)
        user_a, user_b = ordered_pair(me, other)
        now = time.time()
        async with self.db.transaction() as tx:
            created = await tx.execute(
                "INSERT INTO rooms (id, type, title, public, status, created_at) "
                "VALUES ($1, 'direct', '', 0, 'idle', $2) ON CONFLICT (id) DO NOTHING",
                room_id, now,
            )
            await tx.execute(
                "INSERT INTO direct_rooms (user_a, user_b, room_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                user_a, user_b, room_id,
            )
            for user in (user_a, user_b):
                await tx.execute(
                    "INSERT INTO room_members (room_id, user_id, role, joined_at) VALUES ($1, $2, 'member', $3) "
                    "ON CONFLICT DO NOTHING",
                    room_id, user, now,
                )
        return await self.registry.require(room_id), bool(created)

    # -- messages ----------------------------------------------------------------------

    def _check_text(self, text: Any, *, attached: bool = False) -> str:
        if attached and text in (None, ""):
            return ""
        if not isinstance(text, str):
            raise RoomError("invalid", "bad_request", "text must be a string")
        if not text.strip():
            raise RoomError("invalid", "empty_text", "a message needs some text")
        if len(text) > self.settings.chat_max_length:
            raise RoomError(
                "invalid", "text_too_long", f"a message has at most {self.settings.chat_max_length} characters"
            )
        return text

    async def find_by_client_id(self, room_id: str, user_id: str, client_id: str) -> ChatMessage | None:
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM chat_messages WHERE room_id = $1 AND user_id = $2 AND client_id = $3",
            room_id, user_id, client_id,
        )
        return ChatMessage.from_row(row) if row else None

    async def send(
        self, identity: Identity, room_id: Any, text: Any, client_id: Any = None,
        *, reply_to: Any = None, attachment: Any = None,
    ) -> tuple[ChatMessage, RoomRecord, bool]:
        """Store a message; (message, room, new). ``new`` is False for a retried clientId.
        ``reply_to``: the id of an earlier message of the room; ``attachment``: see
        :func:`check_attachment` (a message with one may have no text)."""
        if not isinstance(room_id, str) or not room_id:
            raise RoomError("invalid", "bad_request", "roomId must be a room id")
        if client_id is not None and (
            not isinstance(client_id, str) or not client_id or len(client_id) > MAX_CLIENT_ID
        ):
            raise RoomError("invalid", "bad_request", f"clientId must be a string of 1-{MAX_CLIENT_ID} characters")
        attached = check_attachment(attachment)
        text = self._check_text(text, attached=attached is not None)
        if reply_to is not None and (not isinstance(reply_to, str) or not 0 < len(reply_to) <= MAX_CLIENT_ID):
            raise RoomError("invalid", "bad_reply_to", "replyTo must be a message id")
        room = await self.check_access(room_id, identity, write=True)
        if reply_to is not None and await self.db.fetchval(
            "SELECT 1 FROM chat_messages WHERE id = $1 AND room_id = $2", reply_to, room_id
        ) is None:
            raise RoomError("invalid", "bad_reply_to", "replyTo must be a message of this room")
        user = identity.user_id
        if client_id is not None:
            stored = await self.find_by_client_id(room_id, user, client_id)
            if stored is not None:
                return stored, room, False
        if not await self.limiter.allow(f"chat:{room_id}:{user}"):
            raise RoomError("rate_limited", "rate_limited", f"at most {self.settings.chat_rate:g} messages a second")
        message_id = "m_" + secrets.token_hex(10)
        now = time.time()
        expires = now + room.chat_ttl_seconds if room.chat_ttl_seconds else None
        try:
            async with self.db.transaction() as tx:
                seq = await tx.fetchval(
                    "UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq", room_id
                )
                if seq is None:
                    raise room_not_found(room_id)
                inserted = await tx.fetchval(
                    "INSERT INTO chat_messages (id, room_id, seq, user_id, text, client_id, created_at, expires_at,"
                    " reply_to, attachment) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                    " ON CONFLICT DO NOTHING RETURNING id",
                    message_id, room_id, seq, user, text, client_id, now, expires, reply_to,
                    json.dumps(attached) if attached else None,
                )
                if inserted is None:
                    raise _AlreadyStored
                stored_message = ChatMessage(
                    message_id, int(seq), room_id, user, text, now, client_id, reply_to, attached
                )
                if self.on_stored is not None:
                    await self.on_stored(tx, stored_message, room)
        except _AlreadyStored:
            stored = await self.find_by_client_id(room_id, user, str(client_id))
            if stored is None:  # pragma: no cover - only a (room, seq) clash could get here
                raise RoomError("conflict", "conflict", "the message could not be numbered; retry") from None
            return stored, room, False
        return stored_message, room, True

    async def history(
        self,
        room_id: str,
        identity: Identity,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> list[ChatMessage]:
        """A page in ascending seq: after ``after`` (oldest first), before ``before``, or the newest."""
        await self.check_access(room_id, identity, write=False)
        if not 1 <= limit <= MAX_PAGE:
            raise RoomError("invalid", "bad_limit", f"limit must be 1-{MAX_PAGE}")
        args: list[Any] = [room_id, time.time()]
        where = "room_id = $1 AND (expires_at IS NULL OR expires_at > $2)"
        if after is not None:
            args.append(after)
            where += f" AND seq > ${len(args)}"
        if before is not None:
            args.append(before)
            where += f" AND seq < ${len(args)}"
        order = "ASC" if after is not None else "DESC"
        args.append(limit)
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM chat_messages WHERE {where} ORDER BY seq {order} LIMIT ${len(args)}",
            *args,
        )
        messages = [ChatMessage.from_row(r) for r in rows]
        if order == "DESC":
            messages.reverse()
        return messages

    async def delete(self, room_id: str, identity: Identity, message_id: str) -> RoomRecord:
        """The author, the room's owner or an admin deletes a message."""
        room = await self.registry.require(room_id)
        author = await self.db.fetchval(
            "SELECT user_id FROM chat_messages WHERE id = $1 AND room_id = $2", message_id, room_id
        )
        if author is None:
            raise RoomError("not_found", "message_not_found", f"no message {message_id!r} in this room")
        if author != identity.user_id and not room.may_moderate(identity):
            raise RoomError("forbidden", "forbidden", "only the author or the room's owner may delete it")
        await self.db.execute("DELETE FROM chat_messages WHERE id = $1", message_id)
        return room

    async def mark_read(self, room_id: Any, identity: Identity, up_to_seq: Any) -> tuple[RoomRecord, int]:
        """Store the reader's position (never moving back); (room, stored position)."""
        if not isinstance(room_id, str) or not room_id:
            raise RoomError("invalid", "bad_request", "roomId must be a room id")
        if isinstance(up_to_seq, bool) or not isinstance(up_to_seq, int) or up_to_seq < 0:
            raise RoomError("invalid", "bad_request", "upToSeq must be a non-negative integer")
        room = await self.check_access(room_id, identity, write=False)
        position = min(up_to_seq, room.last_seq)
        stored = await self.db.fetchval(
            "INSERT INTO chat_reads (room_id, user_id, up_to_seq, updated_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (room_id, user_id) DO UPDATE SET "
            "up_to_seq = CASE WHEN excluded.up_to_seq > chat_reads.up_to_seq "
            "THEN excluded.up_to_seq ELSE chat_reads.up_to_seq END, updated_at = excluded.updated_at "
            "RETURNING up_to_seq",
            room_id, identity.user_id, position, time.time(),
        )
        return room, int(stored)

    async def read_position(self, room_id: str, user_id: str) -> int:
        value = await self.db.fetchval(
            "SELECT up_to_seq FROM chat_reads WHERE room_id = $1 AND user_id = $2", room_id, user_id
        )
        return int(value or 0)

    # -- disappearing messages ------------------------------------------------------------

    async def sweep_expired(self, batch: int = SWEEP_BATCH) -> int:
        """Delete expired messages, ``batch`` at a time; how many went."""
        total = 0
        while True:
            deleted = await self.db.execute(
                "DELETE FROM chat_messages WHERE id IN "
                "(SELECT id FROM chat_messages WHERE expires_at <= $1 LIMIT $2)",
                time.time(), batch,
            )
            total += deleted
            if deleted < batch:
                return total
            await asyncio.sleep(0)

    async def run_sweeper(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await self.sweep_expired()
                if gone:
                    log.debug("swept %d expired chat messages", gone)
            except Exception:
                log.exception("chat sweeper failed; trying again")


class TypingIndicators:
    """``chat:typing`` is relayed, never stored; an ``on`` that is not refreshed
    within ``expires`` seconds turns itself off (``on_expired`` is called)."""

    def __init__(
        self,
        timers: Timers,
        on_expired: Callable[[str, str], Awaitable[None]],
        expires: float = TYPING_EXPIRES,
    ) -> None:
        self.timers = timers
        self.on_expired = on_expired
        self.expires = expires

    def typing(self, room_id: str, user_id: str, on: bool) -> None:
        key = f"typing:{room_id}:{user_id}"
        if on:
            self.timers.schedule(key, self.expires, lambda: self.on_expired(room_id, user_id))
        else:
            self.timers.cancel(key)
