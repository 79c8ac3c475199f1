"""Gifts: the catalog, sending one (a ledger transfer with a creator/platform split),
and the leaderboards.

A gift goes to the broadcaster (``owner_id``) of a live room, or to the other
party of an active call; never to yourself. The sender pays ``coins x quantity``;
the receiver earns ``floor(total x gift_creator_share)`` computed in exact
integer arithmetic; the platform earns the rest. All of it is one ledger
transfer (gifts/wallets.py) keyed by ``(sender, idempotencyKey)``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from prometheus_client import Counter

from auth import Identity
from config import GiftSpec
from gifts.wallets import (
    PLATFORM_EARNINGS,
    DuplicateTransfer,
    InsufficientFunds,
    Leg,
    WalletLedger,
    coins_account,
)
from rooms.errors import Category, DomainError
from rooms.rooms import RoomRegistry
from rooms.social import SocialGraph
from store import Database, Queries
from webhooks.outbox import Outbox

GIFTS_SENT = Counter("airwave_gifts_sent", "Gift sends that moved coins")
GIFT_COINS = Counter("airwave_gift_coins", "Coins paid by senders of gifts")
GIFT_REFUSALS = Counter("airwave_gift_refusals", "Gift sends refused, by reason", ["reason"])

MAX_QUANTITY = 999
MAX_KEY_LENGTH = 128
MAX_GIFT_COINS = 1_000_000
GIFT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


_CATEGORIES: dict[str, Category] = {
    "bad_request": Category.INVALID,
    "gift_not_found": Category.NOT_FOUND,
    "room_not_found": Category.NOT_FOUND,
    "call_not_found": Category.NOT_FOUND,
    "blocked": Category.FORBIDDEN,
    "banned": Category.FORBIDDEN,
    "not_member": Category.FORBIDDEN,
    "not_receiver": Category.FORBIDDEN,
    "not_call_party": Category.FORBIDDEN,
    "insufficient_funds": Category.CONFLICT,
    "idempotency_key_reused": Category.CONFLICT,
    "gift_exists": Category.CONFLICT,
}


class GiftRefused(DomainError):
    """A gift request that changes nothing; ``code`` says why (bad input the rules
    cannot take, such as a bad quantity, is unprocessable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, _CATEGORIES.get(code, Category.UNPROCESSABLE))


def refuse(code: str, message: str) -> GiftRefused:
    GIFT_REFUSALS.labels(code).inc()
    return GiftRefused(code, message)


def creator_share(total: int, share: Fraction) -> tuple[int, int]:
    """(creator, platform): the creator's part rounded down, exactly; the platform the rest."""
    creator = total * share.numerator // share.denominator
    return creator, total - creator


def share_fraction(share: float) -> Fraction:
    """0.6 means 3/5, not the binary float nearest to 0.6."""
    return Fraction(str(share))


# ------------------------------------------------------------------------ catalog


@dataclass(frozen=True)
class Gift:
    id: str
    name: str
    coins: int
    image_url: str = ""
    active: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "coins": self.coins, "imageUrl": self.image_url}

    @staticmethod
    def from_row(row: dict[str, Any]) -> Gift:
        return Gift(
            id=row["id"],
            name=row["name"],
            coins=int(row["coins"]),
            image_url=row["image_url"],
            active=bool(row["active"]),
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_gift_fields(data: Any, *, partial: bool) -> dict[str, Any]:
    """Validated catalog fields from a JSON body (``partial`` for PATCH)."""
    if not isinstance(data, dict):
        raise GiftRefused("bad_request", "the body must be a JSON object")
    fields: dict[str, Any] = {}
    if "id" in data or not partial:
        gift_id = data.get("id")
        if not isinstance(gift_id, str) or not GIFT_ID.match(gift_id):
            raise GiftRefused("bad_gift", "id must be 1-64 letters, digits, '-' or '_'")
        fields["id"] = gift_id
    if "name" in data or not partial:
        name = data.get("name")
        if not isinstance(name, str) or not (1 <= len(name.strip()) <= 100):
            raise GiftRefused("bad_gift", "name must be 1-100 characters")
        fields["name"] = name.strip()
    if "coins" in data or not partial:
        coins = _int(data.get("coins"))
        if coins is None or not (1 <= coins <= MAX_GIFT_COINS):
            raise GiftRefused("bad_gift", f"coins must be an integer from 1 to {MAX_GIFT_COINS}")
        fields["coins"] = coins
    if "imageUrl" in data:
        image_url = data.get("imageUrl")
        if not isinstance(image_url, str) or len(image_url) > 2048:
            raise GiftRefused("bad_gift", "imageUrl must be a string of at most 2048 characters")
        fields["image_url"] = image_url
    if "active" in data:
        if not partial or not isinstance(data["active"], bool):
            raise GiftRefused("bad_gift", "active is a boolean, and only PATCH sets it")
        fields["active"] = 1 if data["active"] else 0
    if partial and not fields:
        raise GiftRefused("bad_gift", "nothing to change: send name, coins, imageUrl or active")
    return fields


class GiftCatalog:
    def __init__(self, db: Database, seed: tuple[GiftSpec, ...]) -> None:
        self.db = db
        self.seed = seed

    async def seed_if_empty(self) -> int:
        """Insert the configured gifts when the catalog has never had any; return how many."""
        if await self.db.fetchval("SELECT COUNT(*) FROM gift_catalog") != 0:
            return 0
        now = time.time()
        inserted = 0
        async with self.db.transaction() as tx:
            for position, spec in enumerate(self.seed):
                inserted += await tx.execute(
                    "INSERT INTO gift_catalog (id, name, coins, image_url, active, position,"
                    " created_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $6, $6)"
                    " ON CONFLICT (id) DO NOTHING",
                    spec.id, spec.name, spec.coins, spec.image_url, position, now,
                )
        return inserted

    async def list(self, *, include_inactive: bool = False) -> list[Gift]:
        where = "" if include_inactive else " WHERE active = 1"
        rows = await self.db.fetch(f"SELECT * FROM gift_catalog{where} ORDER BY position, id")
        return [Gift.from_row(r) for r in rows]

    async def get(self, gift_id: str) -> Gift | None:
        row = await self.db.fetchrow("SELECT * FROM gift_catalog WHERE id = $1", gift_id)
        return Gift.from_row(row) if row else None

    async def create(self, data: Any) -> Gift:
        fields = parse_gift_fields(data, partial=False)
        now = time.time()
        async with self.db.transaction() as tx:
            position = await tx.fetchval("SELECT COALESCE(MAX(position), -1) + 1 FROM gift_catalog")
            created = await tx.execute(
                "INSERT INTO gift_catalog (id, name, coins, image_url, active, position,"
                " created_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $6, $6)"
                " ON CONFLICT (id) DO NOTHING",
                fields["id"], fields["name"], fields["coins"], fields.get("image_url", ""),
                int(position), now,
            )
        if not created:
            raise GiftRefused(
                "gift_exists",
                f"gift {fields['id']} exists (a deleted one is revived with PATCH active=true)",
            )
        return Gift(fields["id"], fields["name"], fields["coins"], fields.get("image_url", ""))

    async def update(self, gift_id: str, data: Any) -> Gift:
        fields = parse_gift_fields(data, partial=True)
        fields.pop("id", None)
        if not fields:
            raise GiftRefused("bad_gift", "the id of a gift cannot change")
        names = list(fields)
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=3))
        row = await self.db.fetchrow(
            f"UPDATE gift_catalog SET updated_at = $2, {sets} WHERE id = $1 RETURNING *",
            gift_id, time.time(), *(fields[n] for n in names),
        )
        if row is None:
            raise GiftRefused("gift_not_found", f"no gift {gift_id}")
        return Gift.from_row(row)

    async def deactivate(self, gift_id: str) -> None:
        """Gifts already sent keep pointing at it; it can no longer be sent."""
        changed = await self.db.execute(
            "UPDATE gift_catalog SET active = 0, updated_at = $2 WHERE id = $1", gift_id, time.time()
        )
        if not changed:
            raise GiftRefused("gift_not_found", f"no gift {gift_id}")


# ------------------------------------------------------------------------ sending


@dataclass(frozen=True)
class SendGift:
    gift_id: str
    to: str
    quantity: int
    idempotency_key: str
    room_id: str | None = None
    call_id: str | None = None

    @staticmethod
    def parse(data: Any) -> SendGift:
        """The same fields over REST and Socket.IO: giftId, to, roomId|callId, quantity,
        idempotencyKey. A bad field is refused before anything is read or written."""
        if not isinstance(data, dict):
            raise refuse("bad_request", "send a JSON object with giftId, to, roomId or callId, "
                         "quantity and idempotencyKey")
        gift_id, to = data.get("giftId"), data.get("to")
        if not isinstance(gift_id, str) or not gift_id:
            raise refuse("bad_request", "giftId is required")
        if not isinstance(to, str) or not to:
            raise refuse("bad_request", "to (the receiver's user id) is required")
        quantity = _int(data.get("quantity", 1))
        if quantity is None or not (1 <= quantity <= MAX_QUANTITY):
            raise refuse("bad_quantity", f"quantity must be an integer from 1 to {MAX_QUANTITY}")
        key = data.get("idempotencyKey")
        if not isinstance(key, str) or not (1 <= len(key) <= MAX_KEY_LENGTH):
            raise refuse(
                "missing_idempotency_key",
                f"idempotencyKey is required: 1-{MAX_KEY_LENGTH} characters, new for each gift",
            )
        room_id, call_id = data.get("roomId"), data.get("callId")
        if (room_id is None) == (call_id is None):
            raise refuse("bad_target", "give exactly one of roomId or callId")
        target = room_id if room_id is not None else call_id
        if not isinstance(target, str) or not target:
            raise refuse("bad_target", "roomId or callId must be a non-empty string")
        return SendGift(gift_id, to, quantity, key, room_id, call_id)


@dataclass(frozen=True)
class GiftSent:
    transfer_id: str
    sender: str
    receiver: str
    gift: Gift  # as sent: coins is the unit price paid
    quantity: int
    coins: int
    creator_coins: int
    platform_coins: int
    balance: int  # the sender's coins after this transfer
    room_id: str | None
    call_id: str | None
    created_at: float
    replayed: bool = False

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "transferId": self.transfer_id,
            "giftId": self.gift.id,
            "from": self.sender,
            "to": self.receiver,
            "quantity": self.quantity,
            "coins": self.coins,
            "creatorCoins": self.creator_coins,
            "platformCoins": self.platform_coins,
            "balance": self.balance,
            "createdAt": self.created_at,
        }
        out.update(self.target())
        return out

    def target(self) -> dict[str, str]:
        return {"roomId": self.room_id} if self.room_id is not None else {"callId": self.call_id or ""}

    def received_event(self) -> dict[str, Any]:
        """The ``gift:received`` payload for everyone in the room or call."""
        return {
            "from": self.sender,
            "to": self.receiver,
            "gift": self.gift.as_json(),
            "quantity": self.quantity,
            "coins": self.coins,
            "transferId": self.transfer_id,
            **self.target(),
        }


def metadata_target(request: SendGift) -> dict[str, Any]:
    return {"roomId": request.room_id} if request.room_id else {"callId": request.call_id}


class GiftService:
    def __init__(
        self,
        db: Database,
        ledger: WalletLedger,
        catalog: GiftCatalog,
        social: SocialGraph,
        creator_share_setting: float,
        rooms: RoomRegistry,
        outbox: Outbox | None = None,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.catalog = catalog
        self.social = social
        self.share = share_fraction(creator_share_setting)
        self.rooms = rooms
        self.outbox = outbox  # gift.sent, in the gift's transaction

    async def check_audience(self, identity: Identity, room_id: str) -> None:
        """A room's gifts and leaderboard are for its audience (rooms/rooms.py's one rule)."""
        room = await self.rooms.get(room_id)
        if room is None:
            raise refuse("room_not_found", f"no room {room_id}")
        refusal = await self.rooms.audience_refusal(room, identity)
        if refusal is not None:
            raise refuse(refusal.code, refusal.message)

    async def send(self, identity: Identity, request: SendGift) -> GiftSent:
        """Move the coins once. A repeated (sender, idempotencyKey) returns the first result."""
        sender = identity.user_id
        first = await self._find_sent(sender, request.idempotency_key)
        if first is not None:
            return self._replay(first, request)
        if request.room_id is not None:
            await self.check_audience(identity, request.room_id)
        if request.to == sender:
            raise refuse("cannot_gift_self", "you cannot send a gift to yourself")
        if await self.social.is_blocked(sender, request.to):
            raise refuse("blocked", f"gifts between you and {request.to} are blocked")
        now = time.time()
        try:
            async with self.db.transaction() as tx:
                gift = await self._sendable_gift(tx, request.gift_id)
                stream_id = await self._check_receiver(tx, sender, request)
                total = gift.coins * request.quantity
                creator, platform = creator_share(total, self.share)
                metadata: dict[str, Any] = {
                    "giftId": gift.id, "quantity": request.quantity, "from": sender, "to": request.to,
                }
                metadata.update(metadata_target(request))
                transfer_id, entries = await self.ledger.post(
                    tx,
                    kind="gift",
                    scope=sender,
                    key=request.idempotency_key,
                    metadata=metadata,
                    legs=[
                        Leg.coins(sender, -total),
                        Leg.earnings(request.to, creator),
                        Leg.other(PLATFORM_EARNINGS, platform),
                    ],
                    now=now,
                )
                await tx.execute(
                    "INSERT INTO gifts_sent (transfer_id, sender_id, receiver_id, gift_id, quantity,"
                    " unit_coins, coins, creator_coins, platform_coins, room_id, call_id, stream_id,"
                    " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    transfer_id, sender, request.to, gift.id, request.quantity, gift.coins, total,
                    creator, platform, request.room_id, request.call_id, stream_id, now,
                )
                if self.outbox is not None:
                    target = f"room:{request.room_id}" if request.room_id else f"call:{request.call_id}"
                    await self.outbox.add(
                        tx, "gift.sent", target,
                        {"transferId": transfer_id, "giftId": gift.id, "from": sender, "to": request.to,
                         "quantity": request.quantity, "coins": total, "creatorCoins": creator,
                         "platformCoins": platform, **metadata_target(request)},
                        now=now,
                    )
        except DuplicateTransfer:
            first = await self._find_sent(sender, request.idempotency_key)
            if first is None:  # pragma: no cover - the twin committed before we failed
                raise
            return self._replay(first, request)
        except InsufficientFunds:
            raise refuse(
                "insufficient_funds", f"{total} coins are needed for {request.quantity} x {gift.id}"
            ) from None
        balance = next(e.balance_after for e in entries if e.account == coins_account(sender))
        GIFTS_SENT.inc()
        GIFT_COINS.inc(total)
        return GiftSent(
            transfer_id, sender, request.to, gift, request.quantity, total, creator, platform,
            balance, request.room_id, request.call_id, now,
        )

    async def _sendable_gift(self, tx: Queries, gift_id: str) -> Gift:
        row = await tx.fetchrow("SELECT * FROM gift_catalog WHERE id = $1 AND active = 1", gift_id)
        if row is None:
            raise refuse("gift_not_found", f"no gift {gift_id} in the catalog")
        return Gift.from_row(row)

    async def _check_receiver(self, tx: Queries, sender: str, request: SendGift) -> str | None:
        """Refuse unless ``to`` is the live room's broadcaster or the active call's other
        party; return the room's current stream id (for the stream leaderboard)."""
        if request.room_id is not None:
            room = await tx.fetchrow(
                "SELECT status, owner_id, stream_id FROM rooms WHERE id = $1", request.room_id
            )
            if room is None:
                raise refuse("room_not_found", f"no room {request.room_id}")
            if room["status"] != "live":
                raise refuse("room_not_live", f"room {request.room_id} is not live")
            if room["owner_id"] != request.to:
                raise refuse("not_receiver", "gifts in a room go to its broadcaster")
            return room["stream_id"]
        call = await tx.fetchrow(
            "SELECT caller_id, callee_id, status FROM calls WHERE id = $1", request.call_id
        )
        if call is None:
            raise refuse("call_not_found", f"no call {request.call_id}")
        parties = {call["caller_id"], call["callee_id"]}
        if sender not in parties:
            raise refuse("not_call_party", "only the parties of a call can send gifts in it")
        if call["status"] != "active":
            raise refuse("call_not_active", f"call {request.call_id} is not active")
        if request.to not in parties:
            raise refuse("not_receiver", "gifts in a call go to the other party")
        return None

    async def _find_sent(self, sender: str, key: str) -> GiftSent | None:
        row = await self.db.fetchrow(
            "SELECT g.*, t.id AS tid, e.balance_after, c.name AS gift_name, c.image_url"
            " FROM ledger_transfers t"
            " JOIN gifts_sent g ON g.transfer_id = t.id"
            " JOIN ledger_entries e ON e.transfer_id = t.id AND e.account = $3"
            " LEFT JOIN gift_catalog c ON c.id = g.gift_id"
            " WHERE t.kind = 'gift' AND t.idempotency_scope = $1 AND t.idempotency_key = $2",
            sender, key, coins_account(sender),
        )
        if row is None:
            return None
        gift = Gift(
            row["gift_id"], row["gift_name"] or row["gift_id"], int(row["unit_coins"]),
            row["image_url"] or "",
        )
        return GiftSent(
            row["tid"], sender, row["receiver_id"], gift, int(row["quantity"]), int(row["coins"]),
            int(row["creator_coins"]), int(row["platform_coins"]), int(row["balance_after"]),
            row["room_id"], row["call_id"], float(row["created_at"]), replayed=True,
        )

    def _replay(self, first: GiftSent, request: SendGift) -> GiftSent:
        same = (
            first.gift.id == request.gift_id
            and first.receiver == request.to
            and first.quantity == request.quantity
            and first.room_id == request.room_id
            and first.call_id == request.call_id
        )
        if not same:
            raise refuse(
                "idempotency_key_reused",
                "this idempotencyKey was used for a different gift; use a new key for a new gift",
            )
        return replace(first, replayed=True)

    # ------------------------------------------------------------------ leaderboards
    async def room_leaderboard(self, room_id: str, limit: int) -> list[dict[str, Any]]:
        """Top gifters of the room's current stream."""
        room = await self.db.fetchrow("SELECT stream_id FROM rooms WHERE id = $1", room_id)
        if room is None:
            raise GiftRefused("room_not_found", f"no room {room_id}")
        rows = await self.db.fetch(
            "SELECT sender_id, CAST(SUM(coins) AS BIGINT) AS total FROM gifts_sent"
            " WHERE room_id = $1 AND COALESCE(stream_id, '') = $2"
            " GROUP BY sender_id ORDER BY total DESC, sender_id LIMIT $3",
            room_id, room["stream_id"] or "", limit,
        )
        return [{"userId": r["sender_id"], "coins": int(r["total"])} for r in rows]

    async def creator_leaderboard(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        """Top gifters of a creator, all time (rooms and calls)."""
        rows = await self.db.fetch(
            "SELECT sender_id, CAST(SUM(coins) AS BIGINT) AS total FROM gifts_sent"
            " WHERE receiver_id = $1 GROUP BY sender_id ORDER BY total DESC, sender_id LIMIT $2",
            user_id, limit,
        )
        return [{"userId": r["sender_id"], "coins": int(r["total"])} for r in rows]


__all__ = [
    "Gift",
    "GiftCatalog",
    "GiftRefused",
    "GiftSent",
    "GiftService",
    "SendGift",
    "creator_share",
    "share_fraction",
]
