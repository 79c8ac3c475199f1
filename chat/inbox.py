"""The inbox: a user's direct and group chats, most recent activity first.

Each chat comes with its last message, how many messages from others the user
has not read (after their ``chat_reads`` position), and for a direct chat the
other party. A direct chat can be hidden (it returns with the next message);
a group chat is left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from auth import Identity
from chat.chat import ChatMessage
from rooms.rooms import RoomError, RoomRegistry, room_not_found
from store import Database

MAX_PAGE = 100


@dataclass(frozen=True)
class InboxCursor:
    activity: float
    room_id: str

    def encode(self) -> str:
        return f"{self.activity!r}|{self.room_id}"

    @staticmethod
    def decode(raw: str) -> InboxCursor:
        activity, _, room_id = raw.partition("|")
        try:
            value = float(activity)
        except ValueError:
            raise RoomError("invalid", "bad_cursor", "before is a nextBefore of an earlier page") from None
        if not room_id or len(room_id) > 128:
            raise RoomError("invalid", "bad_cursor", "before is a nextBefore of an earlier page")
        return InboxCursor(value, room_id)


_LAST = (
    "SELECT MAX(seq) FROM chat_messages x WHERE x.room_id = r.id"
    " AND (x.expires_at IS NULL OR x.expires_at > $2)"
)
_INBOX = (
    "SELECT r.id, r.type, r.title, r.owner_id, r.created_at,"
    " m.id AS m_id, m.seq AS m_seq, m.user_id AS m_user, m.text AS m_text, m.created_at AS m_at,"
    " m.client_id AS m_client, m.reply_to AS m_reply, m.attachment AS m_attachment,"
    " COALESCE(m.created_at, r.created_at) AS activity,"
    " (SELECT COUNT(*) FROM chat_messages u WHERE u.room_id = r.id AND u.user_id <> $1"
    "  AND u.seq > COALESCE(cr.up_to_seq, 0) AND (u.expires_at IS NULL OR u.expires_at > $2)) AS unread"
    " FROM room_members rm"
    " JOIN rooms r ON r.id = rm.room_id AND r.type IN ('direct', 'group')"
    f" LEFT JOIN chat_messages m ON m.room_id = r.id AND m.seq = ({_LAST})"
    " LEFT JOIN chat_reads cr ON cr.room_id = r.id AND cr.user_id = rm.user_id"
    " LEFT JOIN chat_hidden h ON h.room_id = r.id AND h.user_id = rm.user_id"
    " WHERE rm.user_id = $1 AND (h.up_to_seq IS NULL OR r.last_seq > h.up_to_seq)"
)


class Inbox:
    def __init__(self, db: Database, registry: RoomRegistry) -> None:
        self.db = db
        self.registry = registry

    async def page(
        self, user_id: str, *, before: str = "", limit: int = 20
    ) -> tuple[list[dict[str, Any]], str | None]:
        if not 1 <= limit <= MAX_PAGE:
            raise RoomError("invalid", "bad_limit", f"limit must be 1-{MAX_PAGE}")
        args: list[Any] = [user_id, time.time()]
        sql = _INBOX
        if before:
            cursor = InboxCursor.decode(before)
            args += [cursor.activity, cursor.room_id]
            sql += " AND (COALESCE(m.created_at, r.created_at) < $3"
            sql += " OR (COALESCE(m.created_at, r.created_at) = $3 AND r.id < $4))"
        args.append(limit)
        sql += f" ORDER BY activity DESC, r.id DESC LIMIT ${len(args)}"
        rows = await self.db.fetch(sql, *args)
        others = await self._other_parties([r["id"] for r in rows if r["type"] == "direct"], user_id)
        chats = []
        for row in rows:
            last = None
            if row["m_id"] is not None:
                last = ChatMessage.from_row({
                    "id": row["m_id"], "seq": row["m_seq"], "room_id": row["id"], "user_id": row["m_user"],
                    "text": row["m_text"], "created_at": row["m_at"], "client_id": row["m_client"],
                    "reply_to": row["m_reply"], "attachment": row["m_attachment"],
                }).to_history()
            chats.append({
                "roomId": row["id"],
                "type": row["type"],
                "title": row["title"],
                "otherUserId": others.get(row["id"]),
                "lastMessage": last,
                "unread": int(row["unread"]),
                "activityAt": float(row["activity"]),
            })
        next_before = None
        if len(rows) == limit:
            next_before = InboxCursor(float(rows[-1]["activity"]), rows[-1]["id"]).encode()
        return chats, next_before

    async def _other_parties(self, room_ids: list[str], user_id: str) -> dict[str, str]:
        if not room_ids:
            return {}
        marks = ", ".join(f"${i}" for i in range(2, 2 + len(room_ids)))
        rows = await self.db.fetch(
            f"SELECT room_id, user_id FROM room_members WHERE user_id <> $1 AND room_id IN ({marks})",
            user_id, *room_ids,
        )
        return {r["room_id"]: r["user_id"] for r in rows}

    async def remove(self, identity: Identity, room_id: str) -> str:
        """Hide a direct chat or leave a group; which one happened ("hidden", "left")."""
        room = await self.registry.get(room_id)
        if room is None or room.type not in ("direct", "group") or not await self.registry.is_member(
            room_id, identity.user_id
        ):
            raise room_not_found(room_id)  # a chat you are not in does not exist for you
        if room.type == "group":
            await self.registry.remove_member(room_id, identity, identity.user_id)
            return "left"
        await self.db.execute(
            "INSERT INTO chat_hidden (room_id, user_id, up_to_seq, hidden_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (room_id, user_id) DO UPDATE SET up_to_seq = excluded.up_to_seq,"
            " hidden_at = excluded.hidden_at",
            room_id, identity.user_id, room.last_seq, time.time(),
        )
        return "hidden"
