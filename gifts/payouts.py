"""Money out: refunds and chargebacks, creator payouts, and the ledger's reconciliation.

Every movement is a transfer of gifts/wallets.py (double-entry, idempotent).

Refunds and chargebacks (from the payment backend's signed webhook) take back
coins a user bought: the user's coins are debited as far as they go, to zero
and never below; coins already given away stay with whoever received them;
what cannot be recovered is booked to ``platform:losses`` (which goes negative)
so that ``external:topup`` is still made whole and nothing is lost from the books.

Payouts move a creator's earnings out: a request debits the earnings at once
into ``platform:payouts_pending`` (a conditional UPDATE, under the wallet's
row lock, so earnings are never withdrawn twice however many requests race);
a rejection credits them back; the app's backend confirms the payment and they
move on to ``external:payouts``. Only earnings older than the hold time can be
withdrawn, and a request asks for at least the minimum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from gifts.wallets import (
    EXTERNAL_TOPUP,
    DuplicateTransfer,
    InsufficientFunds,
    Leg,
    WalletLedger,
    coins_account,
    earnings_account,
)
from rooms.errors import Category, DomainError
from store import Database, Queries, Row
from webhooks.outbox import Outbox, sortable_id

PLATFORM_LOSSES = "platform:losses"
PAYOUTS_PENDING = "platform:payouts_pending"
EXTERNAL_PAYOUTS = "external:payouts"
REFUND_KINDS = ("refund", "chargeback")
REFUND_SCOPE = "webhook"
PAYOUT_SCOPE = "payout"
MAX_KEY = 128
MAX_NOTE = 500
MAX_COINS = 1_000_000_000
RETRIES = 5
OFFENDERS = 100


_CATEGORIES: dict[str, Category] = {
    "bad_request": Category.INVALID,
    "insufficient_earnings": Category.CONFLICT,
    "idempotency_key_reused": Category.CONFLICT,
    "payout_state": Category.CONFLICT,
    "payout_not_found": Category.NOT_FOUND,
}


class MoneyRefused(DomainError):
    """A request that changes nothing; ``code`` says why (anything else the rules
    cannot take is unprocessable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, _CATEGORIES.get(code, Category.UNPROCESSABLE))


# ------------------------------------------------------------------------ refunds


@dataclass(frozen=True)
class Refund:
    transfer_id: str
    kind: str
    event_id: str
    user_id: str
    coins: int
    recovered: int
    loss: int
    balance: int
    created_at: float
    replayed: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "transferId": self.transfer_id,
            "kind": self.kind,
            "eventId": self.event_id,
            "userId": self.user_id,
            "coins": self.coins,
            "recovered": self.recovered,
            "loss": self.loss,
            "balance": self.balance,
            "createdAt": self.created_at,
        }


class Refunds:
    def __init__(self, db: Database, ledger: WalletLedger) -> None:
        self.db = db
        self.ledger = ledger

    async def take_back(self, kind: str, event_id: str, user_id: str, coins: int) -> Refund:
        """Debit up to ``coins`` from the user's coins, once per ``event_id``."""
        if kind not in REFUND_KINDS or coins <= 0:
            raise ValueError("a refund or chargeback of at least one coin")
        for _ in range(RETRIES):
            first = await self.find(event_id)
            if first is not None:
                if (first.kind, first.user_id, first.coins) != (kind, user_id, coins):
                    raise MoneyRefused(
                        "event_id_reused",
                        f"event {event_id} was applied as a {first.kind} of {first.coins} coins"
                        f" for {first.user_id}; an eventId cannot be reused",
                    )
                return first
            now = time.time()
            try:
                async with self.db.transaction() as tx:
                    balance = int(await tx.fetchval(
                        "SELECT coins FROM wallets WHERE user_id = $1", user_id
                    ) or 0)
                    recovered = min(balance, coins)
                    transfer_id, entries = await self.ledger.post(
                        tx, kind=kind, scope=REFUND_SCOPE, key=event_id,
                        metadata={"eventId": event_id, "userId": user_id, "coins": coins,
                                  "recovered": recovered, "loss": coins - recovered},
                        legs=[Leg.coins(user_id, -recovered), Leg.other(PLATFORM_LOSSES, recovered - coins),
                              Leg.other(EXTERNAL_TOPUP, coins)],
                        now=now,
                    )
            except InsufficientFunds:
                continue  # a gift spent coins since we read the balance: read it again
            except DuplicateTransfer:
                continue  # a twin delivery won: answer with its result
            after = next((e.balance_after for e in entries if e.account == coins_account(user_id)), 0)
            return Refund(transfer_id, kind, event_id, user_id, coins, recovered, coins - recovered,
                          after, now)
        raise MoneyRefused("busy", "the balance kept changing; retry the same event")

    async def find(self, event_id: str) -> Refund | None:
        found = await self.ledger.find_event_transfer(REFUND_KINDS, REFUND_SCOPE, event_id)
        if found is None:
            return None
        row, meta, balance = found
        return Refund(
            row["id"], row["kind"], event_id, str(meta["userId"]), int(meta["coins"]),
            int(meta["recovered"]), int(meta["loss"]), balance, float(row["created_at"]),
            replayed=True,
        )


# ------------------------------------------------------------------------ payouts


@dataclass(frozen=True)
class Payout:
    id: str
    user_id: str
    coins: int
    status: str
    created_at: float
    decided_at: float | None
    decided_by: str | None
    note: str | None
    paid_at: float | None
    reference: str | None
    replayed: bool = False

    @classmethod
    def from_row(cls, row: Row, *, replayed: bool = False) -> Payout:
        return cls(
            row["id"], row["user_id"], int(row["coins"]), row["status"], float(row["created_at"]),
            _float(row["decided_at"]), row["decided_by"], row["note"], _float(row["paid_at"]),
            row["reference"], replayed,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "userId": self.user_id,
            "coins": self.coins,
            "status": self.status,
            "createdAt": self.created_at,
            "decidedAt": self.decided_at,
            "decidedBy": self.decided_by,
            "note": self.note,
            "paidAt": self.paid_at,
            "reference": self.reference,
        }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _coins(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (1 <= value <= MAX_COINS):
        raise MoneyRefused("bad_coins", f"coins must be an integer from 1 to {MAX_COINS}")
    return value


def _text(value: Any, name: str, maximum: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > maximum:
        raise MoneyRefused("bad_request", f"{name} must be a string of at most {maximum} characters")
    return value


class Payouts:
    def __init__(
        self, db: Database, ledger: WalletLedger, outbox: Outbox | None, *, minimum: int,
        hold_seconds: float,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.outbox = outbox
        self.minimum = minimum
        self.hold_seconds = hold_seconds

    async def withdrawable(self, tx: Queries, user_id: str, now: float) -> int:
        """Earnings minus those credited by gifts within the hold time, never below zero."""
        earnings = int(await tx.fetchval("SELECT earnings FROM wallets WHERE user_id = $1", user_id) or 0)
        recent = await tx.fetchval(
            "SELECT COALESCE(SUM(e.amount), 0) FROM ledger_entries e"
            " JOIN ledger_transfers t ON t.id = e.transfer_id"
            " WHERE e.account = $1 AND e.amount > 0 AND t.kind = 'gift' AND t.created_at > $2",
            earnings_account(user_id), now - self.hold_seconds,
        )
        return max(0, earnings - int(recent or 0))

    async def balance(self, user_id: str) -> dict[str, int]:
        async with self.db.transaction() as tx:
            available = await self.withdrawable(tx, user_id, time.time())
            earnings = int(await tx.fetchval("SELECT earnings FROM wallets WHERE user_id = $1", user_id) or 0)
        return {"earnings": earnings, "withdrawable": available, "minimum": self.minimum}

    async def request(self, user_id: str, data: Any) -> Payout:
        """A creator asks for ``coins`` of their earnings; the same idempotencyKey
        returns the first request."""
        if not isinstance(data, dict):
            raise MoneyRefused("bad_request", "send {coins, idempotencyKey}")
        coins = _coins(data.get("coins"))
        key = data.get("idempotencyKey")
        if not isinstance(key, str) or not (1 <= len(key) <= MAX_KEY):
            raise MoneyRefused("missing_idempotency_key", f"idempotencyKey: 1-{MAX_KEY} characters")
        first = await self._by_key(user_id, key)
        if first is not None:
            return self._replay(first, coins)
        if coins < self.minimum:
            raise MoneyRefused("below_minimum", f"a payout is at least {self.minimum} coins")
        now = time.time()
        payout_id = sortable_id("po_")
        try:
            async with self.db.transaction() as tx:
                # Take the wallet's row lock first: racing requests of one creator queue here,
                # so each sees the earnings the one before it left.
                await tx.execute("UPDATE wallets SET updated_at = updated_at WHERE user_id = $1", user_id)
                available = await self.withdrawable(tx, user_id, now)
                if coins > available:
                    raise MoneyRefused(
                        "insufficient_earnings",
                        f"{available} coins of earnings can be withdrawn now (earnings younger than"
                        f" {self.hold_seconds:g} s are held)",
                    )
                transfer_id, _ = await self.ledger.post(
                    tx, kind="payout", scope=user_id, key=key,
                    metadata={"payoutId": payout_id, "userId": user_id, "coins": coins},
                    legs=[Leg.earnings(user_id, -coins), Leg.other(PAYOUTS_PENDING, coins)], now=now,
                )
                row = await tx.fetchrow(
                    "INSERT INTO payouts (id, user_id, coins, status, idempotency_key, request_transfer_id,"
                    " created_at) VALUES ($1, $2, $3, 'requested', $4, $5, $6) RETURNING *",
                    payout_id, user_id, coins, key, transfer_id, now,
                )
                assert row is not None
                payout = Payout.from_row(row)
                await self._event(tx, "payout.requested", payout)
        except DuplicateTransfer:
            raced = await self._by_key(user_id, key)
            if raced is None:  # pragma: no cover - the twin committed before we failed
                raise
            return self._replay(raced, coins)
        except InsufficientFunds:  # the conditional debit: earnings moved under us
            raise MoneyRefused("insufficient_earnings", "not enough earnings") from None
        return payout

    def _replay(self, first: Payout, coins: int) -> Payout:
        if first.coins != coins:
            raise MoneyRefused(
                "idempotency_key_reused", "this idempotencyKey was used for another amount"
            )
        return replace(first, replayed=True)

    async def _by_key(self, user_id: str, key: str) -> Payout | None:
        row = await self.db.fetchrow(
            "SELECT * FROM payouts WHERE user_id = $1 AND idempotency_key = $2", user_id, key
        )
        return Payout.from_row(row, replayed=True) if row else None

    async def get(self, payout_id: str) -> Payout | None:
        row = await self.db.fetchrow("SELECT * FROM payouts WHERE id = $1", payout_id)
        return Payout.from_row(row) if row else None

    async def list(
        self, *, user_id: str | None = None, status: str | None = None, before: str = "", limit: int = 50
    ) -> list[Payout]:
        where, args = [], []  # type: ignore[var-annotated]
        for column, value in (("user_id", user_id), ("status", status)):
            if value:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if before:
            args.append(before)
            where.append(f"id < ${len(args)}")
        args.append(limit)
        clause = " WHERE " + " AND ".join(where) if where else ""
        rows = await self.db.fetch(
            f"SELECT * FROM payouts{clause} ORDER BY id DESC LIMIT ${len(args)}", *args
        )
        return [Payout.from_row(r) for r in rows]

    async def approve(self, payout_id: str, admin: str, note: Any = None) -> Payout:
        note_text = _text(note, "note", MAX_NOTE)
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE payouts SET status = 'approved', decided_at = $2, decided_by = $3, note = $4"
                " WHERE id = $1 AND status = 'requested' RETURNING *",
                payout_id, time.time(), admin, note_text,
            )
            if row is not None:
                payout = Payout.from_row(row)
                await self._event(tx, "payout.approved", payout)
                return payout
        raise await self._wrong_state(payout_id, "requested")

    async def reject(self, payout_id: str, admin: str, note: Any = None) -> Payout:
        """The earnings go back to the creator."""
        note_text = _text(note, "note", MAX_NOTE)
        now = time.time()
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE payouts SET status = 'rejected', decided_at = $2, decided_by = $3, note = $4"
                " WHERE id = $1 AND status IN ('requested', 'approved') RETURNING *",
                payout_id, now, admin, note_text,
            )
            if row is not None:
                payout = Payout.from_row(row)
                transfer_id, _ = await self.ledger.post(
                    tx, kind="payout_rejected", scope=PAYOUT_SCOPE, key=payout.id,
                    metadata={"payoutId": payout.id, "userId": payout.user_id, "coins": payout.coins},
                    legs=[Leg.other(PAYOUTS_PENDING, -payout.coins), Leg.earnings(payout.user_id, payout.coins)],
                    now=now,
                )
                await tx.execute("UPDATE payouts SET settle_transfer_id = $2 WHERE id = $1", payout.id, transfer_id)
                await self._event(tx, "payout.rejected", payout)
                return payout
        raise await self._wrong_state(payout_id, "requested or approved")

    async def mark_paid(self, payout_id: str, reference: Any = None) -> Payout:
        """The app's backend paid an approved payout; a repeat answers the paid payout."""
        reference_text = _text(reference, "reference", MAX_KEY)
        now = time.time()
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE payouts SET status = 'paid', paid_at = $2, reference = $3"
                " WHERE id = $1 AND status = 'approved' RETURNING *",
                payout_id, now, reference_text,
            )
            if row is not None:
                payout = Payout.from_row(row)
                transfer_id, _ = await self.ledger.post(
                    tx, kind="payout_paid", scope=PAYOUT_SCOPE, key=payout.id,
                    metadata={"payoutId": payout.id, "userId": payout.user_id, "coins": payout.coins,
                              "reference": reference_text},
                    legs=[Leg.other(PAYOUTS_PENDING, -payout.coins), Leg.other(EXTERNAL_PAYOUTS, payout.coins)],
                    now=now,
                )
                await tx.execute("UPDATE payouts SET settle_transfer_id = $2 WHERE id = $1", payout.id, transfer_id)
                await self._event(tx, "payout.paid", payout)
                return payout
        current = await self.get(payout_id)
        if current is not None and current.status == "paid":
            return replace(current, replayed=True)
        raise await self._wrong_state(payout_id, "approved")

    async def _wrong_state(self, payout_id: str, expected: str) -> MoneyRefused:
        current = await self.get(payout_id)
        if current is None:
            return MoneyRefused("payout_not_found", f"no payout {payout_id!r}")
        return MoneyRefused("payout_state", f"the payout is {current.status}, not {expected}")

    async def _event(self, tx: Queries, event_type: str, payout: Payout) -> None:
        if self.outbox is not None:
            await self.outbox.add(tx, event_type, f"user:{payout.user_id}", payout.as_json())


# ------------------------------------------------------------------------ reconciliation

_ACCOUNT_SUMS = "SELECT account, SUM(amount) AS total FROM ledger_entries GROUP BY account"


async def reconcile(db: Database) -> dict[str, Any]:
    """The ledger's invariants, each with the rows that break it (at most 100 each)."""
    async with db.transaction() as tx:
        total = int(await tx.fetchval("SELECT COALESCE(SUM(amount), 0) FROM ledger_entries") or 0)
        unbalanced = await tx.fetch(
            "SELECT transfer_id, SUM(amount) AS total FROM ledger_entries GROUP BY transfer_id"
            f" HAVING SUM(amount) <> 0 ORDER BY transfer_id LIMIT {OFFENDERS}"
        )
        wallets = await tx.fetch(
            "SELECT w.user_id, w.coins, w.earnings, COALESCE(c.total, 0) AS coins_entries,"
            " COALESCE(e.total, 0) AS earnings_entries FROM wallets w"
            f" LEFT JOIN ({_ACCOUNT_SUMS}) c ON c.account = 'user:' || w.user_id || ':coins'"
            f" LEFT JOIN ({_ACCOUNT_SUMS}) e ON e.account = 'user:' || w.user_id || ':earnings'"
            " WHERE w.coins <> COALESCE(c.total, 0) OR w.earnings <> COALESCE(e.total, 0)"
            f" ORDER BY w.user_id LIMIT {OFFENDERS}"
        )
        accounts = await tx.fetch(
            "SELECT a.account, a.balance, COALESCE(s.total, 0) AS entries FROM ledger_accounts a"
            f" LEFT JOIN ({_ACCOUNT_SUMS}) s ON s.account = a.account"
            f" WHERE a.balance <> COALESCE(s.total, 0) ORDER BY a.account LIMIT {OFFENDERS}"
        )
        negative = await tx.fetch(
            f"SELECT user_id, coins, earnings FROM wallets WHERE coins < 0 OR earnings < 0 LIMIT {OFFENDERS}"
        )
        open_payouts = int(await tx.fetchval(
            "SELECT COALESCE(SUM(coins), 0) FROM payouts WHERE status IN ('requested', 'approved')"
        ) or 0)
        pending = int(await tx.fetchval(
            "SELECT COALESCE(SUM(balance), 0) FROM ledger_accounts WHERE account = $1", PAYOUTS_PENDING
        ) or 0)
    invariants = [
        _invariant("entries_sum_to_zero", total == 0, {"sum": total}),
        _invariant("every_transfer_balances", not unbalanced,
                   [{"transferId": r["transfer_id"], "sum": int(r["total"])} for r in unbalanced]),
        _invariant("wallets_equal_their_entries", not wallets,
                   [{"userId": r["user_id"], "coins": int(r["coins"]), "coinsEntries": int(r["coins_entries"]),
                     "earnings": int(r["earnings"]), "earningsEntries": int(r["earnings_entries"])}
                    for r in wallets]),
        _invariant("accounts_equal_their_entries", not accounts,
                   [{"account": r["account"], "balance": int(r["balance"]), "entries": int(r["entries"])}
                    for r in accounts]),
        _invariant("no_negative_wallet", not negative,
                   [{"userId": r["user_id"], "coins": int(r["coins"]), "earnings": int(r["earnings"])}
                    for r in negative]),
        _invariant("open_payouts_equal_pending_account", open_payouts == pending,
                   {"openPayouts": open_payouts, "pendingAccount": pending}),
    ]
    return {"ok": all(i["ok"] for i in invariants), "checkedAt": time.time(), "invariants": invariants}


def _invariant(name: str, ok: bool, detail: Any) -> dict[str, Any]:
    key = "offending" if isinstance(detail, list) else "values"
    return {"name": name, "ok": ok, key: detail}
