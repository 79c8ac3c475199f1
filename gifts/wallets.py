"""Wallets and the double-entry ledger: coins that never go missing.

Accounts are ``user:<id>:coins``, ``user:<id>:earnings``, ``platform:earnings``
and ``external:topup`` (where top-ups come from, so that it too balances). A
transfer is one ``ledger_transfers`` row and two or more ``ledger_entries``
whose signed amounts sum to zero. Balances live in ``wallets`` (users) and
``ledger_accounts`` (the rest) and are changed by the same statements, in the
same database transaction, that write the entries: every balance equals the
sum of its entries.

No ``SELECT ... FOR UPDATE`` (SQLite has none): a debit is one conditional
``UPDATE ... SET coins = coins - $1 WHERE ... AND coins >= $1 RETURNING``; no
row back means not enough coins and the whole transaction rolls back. Rows are
touched in one global order (user wallets by id, then the other accounts by
name), so that two transfers never wait on each other in a cycle.

Idempotency: ``(kind, idempotency_scope, idempotency_key)`` is unique. The
transfer row is inserted first; a concurrent twin waits on the unique index,
fails with the driver's unique violation, rolls back, and reads the first one.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from rooms.errors import Category, DomainError
from store import Database, Queries, Row, UniqueViolation
from webhooks.outbox import Outbox

PLATFORM_EARNINGS = "platform:earnings"
EXTERNAL_TOPUP = "external:topup"
TOPUP_SCOPE = "webhook"

def coins_account(user_id: str) -> str:
    return f"user:{user_id}:coins"


def earnings_account(user_id: str) -> str:
    return f"user:{user_id}:earnings"


_last_micros = 0


def new_transfer_id() -> str:
    """Sorts by creation time: 14 hex digits of microseconds (strictly increasing in
    this process), then 12 random ones so that two nodes never collide."""
    global _last_micros
    _last_micros = max(time.time_ns() // 1000, _last_micros + 1)
    return f"{_last_micros:014x}{secrets.token_hex(6)}"


class LedgerError(DomainError):
    code = "ledger_error"
    category = Category.CONFLICT

    def __init__(self, message: str = "") -> None:
        super().__init__(self.code, message)


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"


class DuplicateTransfer(LedgerError):
    """The idempotency key was already used; the caller reads the first transfer."""

    code = "duplicate_transfer"


class TopupConflict(LedgerError):
    """An eventId came back with a different user or amount than the first time."""

    code = "event_id_reused"


@dataclass(frozen=True)
class Leg:
    """One side of a transfer: ``wallet`` is "coins" or "earnings" for a user, or
    "" for a non-user account named by ``owner``."""

    wallet: str
    owner: str
    amount: int

    @property
    def account(self) -> str:
        if self.wallet == "coins":
            return coins_account(self.owner)
        if self.wallet == "earnings":
            return earnings_account(self.owner)
        return self.owner

    @staticmethod
    def coins(user_id: str, amount: int) -> Leg:
        return Leg("coins", user_id, amount)

    @staticmethod
    def earnings(user_id: str, amount: int) -> Leg:
        return Leg("earnings", user_id, amount)

    @staticmethod
    def other(account: str, amount: int) -> Leg:
        return Leg("", account, amount)


@dataclass(frozen=True)
class Entry:
    account: str
    amount: int
    balance_after: int


@dataclass(frozen=True)
class Balance:
    coins: int
    earnings: int

    def as_json(self) -> dict[str, int]:
        return {"coins": self.coins, "earnings": self.earnings}


@dataclass(frozen=True)
class Topup:
    transfer_id: str
    event_id: str
    user_id: str
    coins: int
    balance: int
    created_at: float
    replayed: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "transferId": self.transfer_id,
            "eventId": self.event_id,
            "userId": self.user_id,
            "coins": self.coins,
            "balance": self.balance,
            "createdAt": self.created_at,
        }


def _lock_order(leg: Leg) -> tuple[int, str, str]:
    # User wallets first (by user id, both columns of one row together), then the rest.
    return (0 if leg.wallet else 1, leg.owner, leg.wallet)


class WalletLedger:
    def __init__(self, db: Database, outbox: Outbox | None = None) -> None:
        self.db = db
        self.outbox = outbox  # wallet.credited / wallet.debited, in each transfer's transaction

    # ------------------------------------------------------------------ posting
    async def post(
        self,
        tx: Queries,
        *,
        kind: str,
        scope: str,
        key: str,
        metadata: dict[str, Any],
        legs: list[Leg],
        now: float | None = None,
    ) -> tuple[str, list[Entry]]:
        """Record one transfer inside ``tx``. Raises DuplicateTransfer when the key was
        used before and InsufficientFunds when a debit would go below zero; either
        way the caller's transaction must roll back (raising out of it does)."""
        legs = [leg for leg in legs if leg.amount != 0]
        if len(legs) < 2 or sum(leg.amount for leg in legs) != 0:
            raise ValueError(f"a transfer needs two or more legs that sum to zero: {legs}")
        if len({leg.account for leg in legs}) != len(legs):
            raise ValueError(f"a transfer touches each account once: {legs}")
        now = time.time() if now is None else now
        transfer_id = new_transfer_id()
        try:
            await tx.execute(
                "INSERT INTO ledger_transfers (id, kind, idempotency_scope, idempotency_key,"
                " created_at, metadata) VALUES ($1, $2, $3, $4, $5, $6)",
                transfer_id, kind, scope, key, now, json.dumps(metadata, separators=(",", ":")),
            )
        except UniqueViolation:
            raise DuplicateTransfer(f"{kind} {scope}/{key} was already applied") from None
        entries = []
        for leg in sorted(legs, key=_lock_order):
            balance_after = await self._apply(tx, leg, now)
            await tx.execute(
                "INSERT INTO ledger_entries (transfer_id, account, amount, balance_after)"
                " VALUES ($1, $2, $3, $4)",
                transfer_id, leg.account, leg.amount, balance_after,
            )
            entries.append(Entry(leg.account, leg.amount, balance_after))
            if self.outbox is not None and leg.wallet:
                await self.outbox.add(
                    tx,
                    "wallet.credited" if leg.amount > 0 else "wallet.debited",
                    f"user:{leg.owner}",
                    {"userId": leg.owner, "wallet": leg.wallet, "amount": abs(leg.amount),
                     "balance": balance_after, "transferId": transfer_id, "kind": kind},
                    now=now,
                )
        return transfer_id, entries

    async def _apply(self, tx: Queries, leg: Leg, now: float) -> int:
        if leg.wallet in ("coins", "earnings"):
            column = leg.wallet  # one of two fixed names, never user input
            if leg.amount < 0:
                after = await tx.fetchval(
                    f"UPDATE wallets SET {column} = {column} - $1, updated_at = $3"
                    f" WHERE user_id = $2 AND {column} >= $1 RETURNING {column}",
                    -leg.amount, leg.owner, now,
                )
                if after is None:
                    raise InsufficientFunds(f"{leg.account} cannot pay {-leg.amount}")
                return int(after)
            other = "earnings" if column == "coins" else "coins"
            after = await tx.fetchval(
                f"INSERT INTO wallets (user_id, {column}, {other}, updated_at) VALUES ($1, $2, 0, $3)"
                f" ON CONFLICT (user_id) DO UPDATE SET {column} = wallets.{column} + excluded.{column},"
                f" updated_at = excluded.updated_at RETURNING {column}",
                leg.owner, leg.amount, now,
            )
            return int(after)
        after = await tx.fetchval(
            "INSERT INTO ledger_accounts (account, balance) VALUES ($1, $2)"
            " ON CONFLICT (account) DO UPDATE SET balance = ledger_accounts.balance + excluded.balance"
            " RETURNING balance",
            leg.owner, leg.amount,
        )
        return int(after)

    # ------------------------------------------------------------------ top-ups
    async def topup(self, event_id: str, user_id: str, coins: int) -> Topup:
        """Credit coins from the payment backend, once per ``event_id``."""
        if coins <= 0:
            raise ValueError("a top-up credits at least one coin")
        first = await self.find_topup(event_id)
        if first is None:
            now = time.time()
            try:
                async with self.db.transaction() as tx:
                    transfer_id, entries = await self.post(
                        tx,
                        kind="topup",
                        scope=TOPUP_SCOPE,
                        key=event_id,
                        metadata={"eventId": event_id, "userId": user_id, "coins": coins},
                        legs=[Leg.coins(user_id, coins), Leg.other(EXTERNAL_TOPUP, -coins)],
                        now=now,
                    )
                credited = next(e for e in entries if e.account == coins_account(user_id))
                return Topup(transfer_id, event_id, user_id, coins, credited.balance_after, now)
            except DuplicateTransfer:
                first = await self.find_topup(event_id)
                if first is None:  # pragma: no cover - the twin committed, so it is there
                    raise
        if first.user_id != user_id or first.coins != coins:
            raise TopupConflict(
                f"event {event_id} was applied to {first.user_id} for {first.coins} coins;"
                " an eventId cannot be reused for another top-up"
            )
        return first

    async def find_topup(self, event_id: str) -> Topup | None:
        found = await self.find_event_transfer(("topup",), TOPUP_SCOPE, event_id)
        if found is None:
            return None
        row, meta, balance = found
        return Topup(
            row["id"], event_id, str(meta["userId"]), int(meta["coins"]), balance,
            float(row["created_at"]), replayed=True,
        )

    async def find_event_transfer(
        self, kinds: tuple[str, ...], scope: str, event_id: str
    ) -> tuple[Row, dict[str, Any], int] | None:
        """A transfer an incoming webhook event made (a replay's first result): its
        row, its metadata and the coins balance of the metadata's ``userId`` right after."""
        listed = ", ".join(f"'{kind}'" for kind in kinds)  # our own constants, never input
        row = await self.db.fetchrow(
            "SELECT id, kind, created_at, metadata FROM ledger_transfers"
            f" WHERE kind IN ({listed}) AND idempotency_scope = $1 AND idempotency_key = $2",
            scope, event_id,
        )
        if row is None:
            return None
        meta = json.loads(row["metadata"])
        balance = await self.db.fetchval(
            "SELECT balance_after FROM ledger_entries WHERE transfer_id = $1 AND account = $2",
            row["id"], coins_account(str(meta["userId"])),
        )
        return row, meta, int(balance or 0)

    # ------------------------------------------------------------------ reading
    async def balance(self, user_id: str) -> Balance:
        row = await self.db.fetchrow("SELECT coins, earnings FROM wallets WHERE user_id = $1", user_id)
        if row is None:
            return Balance(0, 0)
        return Balance(int(row["coins"]), int(row["earnings"]))

    async def transactions(
        self, user_id: str, *, before: str = "", limit: int = 50
    ) -> list[dict[str, Any]]:
        """The user's own transfers, newest first, with the user's entries in each."""
        accounts = (coins_account(user_id), earnings_account(user_id))
        if before:
            ids = await self.db.fetch(
                "SELECT DISTINCT transfer_id FROM ledger_entries"
                " WHERE account IN ($1, $2) AND transfer_id < $3"
                " ORDER BY transfer_id DESC LIMIT $4",
                *accounts, before, limit,
            )
        else:
            ids = await self.db.fetch(
                "SELECT DISTINCT transfer_id FROM ledger_entries WHERE account IN ($1, $2)"
                " ORDER BY transfer_id DESC LIMIT $3",
                *accounts, limit,
            )
        transfer_ids = [r["transfer_id"] for r in ids]
        if not transfer_ids:
            return []
        marks = ", ".join(f"${i}" for i in range(3, 3 + len(transfer_ids)))
        rows = await self.db.fetch(
            "SELECT t.id, t.kind, t.created_at, t.metadata, e.account, e.amount, e.balance_after"
            " FROM ledger_entries e JOIN ledger_transfers t ON t.id = e.transfer_id"
            f" WHERE e.account IN ($1, $2) AND e.transfer_id IN ({marks})",
            *accounts, *transfer_ids,
        )
        by_id: dict[str, dict[str, Any]] = {}
        for row in rows:
            item = by_id.setdefault(
                row["id"],
                {
                    "id": row["id"],
                    "kind": row["kind"],
                    "createdAt": float(row["created_at"]),
                    "details": json.loads(row["metadata"]),
                    "entries": [],
                },
            )
            item["entries"].append(
                {
                    "account": "coins" if row["account"] == accounts[0] else "earnings",
                    "amount": int(row["amount"]),
                    "balanceAfter": int(row["balance_after"]),
                }
            )
        for item in by_id.values():
            item["entries"].sort(key=lambda e: e["account"])
        return [by_id[t] for t in transfer_ids if t in by_id]


__all__ = [
    "EXTERNAL_TOPUP",
    "PLATFORM_EARNINGS",
    "Balance",
    "DuplicateTransfer",
    "Entry",
    "InsufficientFunds",
    "Leg",
    "LedgerError",
    "TopupConflict",
    "Topup",
    "WalletLedger",
    "coins_account",
    "earnings_account",
]
