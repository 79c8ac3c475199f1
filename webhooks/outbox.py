"""The outbox: events for the app's backend, written to the database first.

``Outbox.add(tx, type, key, data)`` writes one row per configured endpoint, in
the caller's transaction: an event caused by a database change commits or
rolls back with that change, so a crash never loses it and never sends one
for a change that did not happen. Facts that are not a database change of
ours (the media engine saw a publisher) are written when they are seen; when
every node of a cluster sees the same fact (a bus event), each writes it under
the same ``event_id`` (:func:`fact_id`) and the unique index keeps one.

Events of one ``key`` (``room:<id>``, ``call:<id>``, ``user:<id>``) get a
sequence number from ``webhook_keys`` in the same transaction; the dispatcher
sends them in that order. With no endpoint configured nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from config import Settings, WebhookEndpoint
from store import Database, Queries, Row

WEBHOOK_VERSION = 1

# Every event type the outbox carries (docs/webhooks.md describes each).
EVENT_TYPES = (
    "room.started",
    "room.ended",
    "publisher.joined",
    "publisher.left",
    "call.ringing",
    "call.answered",
    "call.extended",
    "call.ended",
    "chat.message",
    "gift.sent",
    "wallet.credited",
    "wallet.debited",
    "payout.requested",
    "payout.approved",
    "payout.rejected",
    "payout.paid",
    "user.suspended",
)

_last_micros = 0


def sortable_id(prefix: str) -> str:
    """``prefix`` then 14 hex digits of microseconds (sorts by time) and 12 random ones."""
    global _last_micros
    _last_micros = max(time.time_ns() // 1000, _last_micros + 1)
    return f"{prefix}{_last_micros:014x}{secrets.token_hex(6)}"


def new_event_id() -> str:
    return sortable_id("evt_")


def fact_id(*parts: str) -> str:
    """The same id on every node for one fact (e.g. ``room.started`` of a stream)."""
    return "evt_" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:26]


@dataclass(frozen=True)
class OutboxEvent:
    """One row of the outbox as admins see it."""

    id: str
    event_id: str
    endpoint: str
    type: str
    key: str
    status: str
    attempts: int
    created_at: float
    last_error: str | None
    payload: dict[str, Any]

    @classmethod
    def from_row(cls, row: Row) -> OutboxEvent:
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            endpoint=row["endpoint"],
            type=row["event_type"],
            key=row["event_key"],
            status=row["status"],
            attempts=int(row["attempts"]),
            created_at=float(row["created_at"]),
            last_error=row["last_error"],
            payload=json.loads(row["payload"]),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "eventId": self.event_id,
            "endpoint": self.endpoint,
            "type": self.type,
            "key": self.key,
            "status": self.status,
            "attempts": self.attempts,
            "createdAt": self.created_at,
            "lastError": self.last_error,
            "event": self.payload,
        }


class Outbox:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.endpoints: tuple[WebhookEndpoint, ...] = settings.webhook_urls
        self.retry_for = settings.webhook_retry_for
        self.chat_text = settings.webhook_chat_text
        self.written = 0  # rows written by this process; the dispatcher looks sooner when it grows

    @property
    def enabled(self) -> bool:
        return bool(self.endpoints)

    async def add(
        self,
        tx: Queries,
        event_type: str,
        key: str,
        data: dict[str, Any],
        *,
        event_id: str | None = None,
        now: float | None = None,
    ) -> str | None:
        """Write the event for every endpoint inside ``tx``; its id, or None when no
        endpoint is configured. A repeated ``event_id`` writes nothing new."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event_type!r}")
        if not self.endpoints:
            return None
        now = time.time() if now is None else now
        if event_id is None:
            event_id = new_event_id()
        elif await tx.fetchval("SELECT 1 FROM webhook_outbox WHERE event_id = $1 LIMIT 1", event_id):
            return event_id  # another node wrote this fact already
        seq = await tx.fetchval(
            "INSERT INTO webhook_keys (event_key, last_seq) VALUES ($1, 1) ON CONFLICT (event_key)"
            " DO UPDATE SET last_seq = webhook_keys.last_seq + 1 RETURNING last_seq",
            key,
        )
        payload = json.dumps(
            {"id": event_id, "type": event_type, "version": WEBHOOK_VERSION, "createdAt": now,
             "key": key, "seq": int(seq), "data": data},
            separators=(",", ":"),
        )
        for endpoint in self.endpoints:
            self.written += await tx.execute(
                "INSERT INTO webhook_outbox (id, event_id, endpoint, event_type, event_key, seq,"
                " payload, status, attempts, created_at, next_at, give_up_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $9)"
                " ON CONFLICT (event_id, endpoint) DO NOTHING",
                sortable_id("whd_"), event_id, endpoint.url, event_type, key, int(seq),
                payload, now, now + self.retry_for,
            )
        return event_id

    async def emit(
        self, event_type: str, key: str, data: dict[str, Any], *, event_id: str | None = None
    ) -> str | None:
        """``add`` in a transaction of its own, for facts that are no change of ours."""
        if not self.endpoints:
            return None
        async with self.db.transaction() as tx:
            return await self.add(tx, event_type, key, data, event_id=event_id)

    # ------------------------------------------------------------------ user.suspended
    async def user_suspended(
        self, tx: Queries, user_id: str, *, reason: str, until: float | None, by: str | None
    ) -> str | None:
        """The hook for suspensions (revocation): call it in the transaction that
        records the suspension."""
        return await self.add(
            tx, "user.suspended", f"user:{user_id}",
            {"userId": user_id, "reason": reason, "until": until, "by": by},
        )

    # ------------------------------------------------------------------ dead letters
    async def failed(self, *, before: str = "", limit: int = 50) -> list[OutboxEvent]:
        """Dead-lettered deliveries, newest first (``before``: an id from the last page)."""
        if before:
            rows = await self.db.fetch(
                "SELECT * FROM webhook_outbox WHERE status = 'failed' AND id < $1"
                " ORDER BY id DESC LIMIT $2",
                before, limit,
            )
        else:
            rows = await self.db.fetch(
                "SELECT * FROM webhook_outbox WHERE status = 'failed' ORDER BY id DESC LIMIT $1", limit
            )
        return [OutboxEvent.from_row(r) for r in rows]

    async def redeliver(self, delivery_id: str) -> OutboxEvent | None:
        """Put a dead-lettered delivery back in the queue for another ``retry_for``;
        None when there is no such failed delivery."""
        now = time.time()
        row = await self.db.fetchrow(
            "UPDATE webhook_outbox SET status = 'pending', attempts = 0, next_at = $2,"
            " give_up_at = $3, lease_owner = NULL, lease_until = NULL"
            " WHERE id = $1 AND status = 'failed' RETURNING *",
            delivery_id, now, now + self.retry_for,
        )
        if row is not None:
            self.written += 1
        return OutboxEvent.from_row(row) if row else None

    async def backlog(self) -> dict[str, Any]:
        """Pending and failed rows, and the age of the oldest pending one."""
        row = await self.db.fetchrow(
            "SELECT"
            " COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) AS queued,"
            " COALESCE(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) AS failed,"
            " MIN(CASE WHEN status = 'pending' THEN created_at END) AS oldest"
            " FROM webhook_outbox"
        )
        assert row is not None
        oldest = row["oldest"]
        age = max(0.0, time.time() - float(oldest)) if oldest is not None else 0.0
        return {"queued": int(row["queued"]), "failed": int(row["failed"]), "oldestAgeSeconds": age}
