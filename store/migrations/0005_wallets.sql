-- Gifts and wallets (rooms/wallets.py, rooms/gifts.py): the catalog, balances,
-- and a double-entry ledger whose entries of one transfer sum to zero.

-- The gift catalog: seeded from settings when empty, then edited by admins.
-- Deleting a gift marks it inactive so that gifts already sent keep their name.
CREATE TABLE IF NOT EXISTS gift_catalog (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    coins BIGINT NOT NULL CHECK (coins > 0),
    image_url TEXT NOT NULL DEFAULT '',
    active INTEGER NOT NULL DEFAULT 1,
    position BIGINT NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- One row per user who ever held coins or earnings. The balances are the sums
-- of the user's ledger entries on user:<id>:coins and user:<id>:earnings.
CREATE TABLE IF NOT EXISTS wallets (
    user_id TEXT PRIMARY KEY,
    coins BIGINT NOT NULL DEFAULT 0 CHECK (coins >= 0),
    earnings BIGINT NOT NULL DEFAULT 0 CHECK (earnings >= 0),
    updated_at DOUBLE PRECISION NOT NULL
);

-- Balances of the accounts that are not a user's: platform:earnings and
-- external:topup (the source of top-ups; it goes negative).
CREATE TABLE IF NOT EXISTS ledger_accounts (
    account TEXT PRIMARY KEY,
    balance BIGINT NOT NULL DEFAULT 0
);

-- One movement of coins. (kind, idempotency_scope, idempotency_key) is unique:
-- a gift's scope is its sender, a top-up's scope is "webhook" and its key the eventId.
-- Ids sort by creation time (hex milliseconds, then random).
CREATE TABLE IF NOT EXISTS ledger_transfers (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    idempotency_scope TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS ledger_transfers_idempotency
    ON ledger_transfers (kind, idempotency_scope, idempotency_key);

-- The legs of a transfer: signed amounts that sum to zero per transfer.
CREATE TABLE IF NOT EXISTS ledger_entries (
    transfer_id TEXT NOT NULL REFERENCES ledger_transfers (id),
    account TEXT NOT NULL,
    amount BIGINT NOT NULL,
    balance_after BIGINT NOT NULL,
    PRIMARY KEY (transfer_id, account)
);
CREATE INDEX IF NOT EXISTS ledger_entries_account ON ledger_entries (account, transfer_id);

-- What a gift transfer was: for the result of a retried send and the leaderboards.
CREATE TABLE IF NOT EXISTS gifts_sent (
    transfer_id TEXT PRIMARY KEY REFERENCES ledger_transfers (id),
    sender_id TEXT NOT NULL,
    receiver_id TEXT NOT NULL,
    gift_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    unit_coins BIGINT NOT NULL,
    coins BIGINT NOT NULL,
    creator_coins BIGINT NOT NULL,
    platform_coins BIGINT NOT NULL,
    room_id TEXT,
    call_id TEXT,
    stream_id TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS gifts_sent_room ON gifts_sent (room_id, stream_id);
CREATE INDEX IF NOT EXISTS gifts_sent_receiver ON gifts_sent (receiver_id);
