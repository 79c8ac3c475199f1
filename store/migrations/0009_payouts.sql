-- Money out (rooms/payouts.py): creator payouts. Refunds and chargebacks are
-- ledger transfers only (kind refund or chargeback, see docs/gifts.md).

-- A payout moves earnings to platform:payouts_pending when it is requested
-- (so they cannot be withdrawn twice), back to the creator when it is rejected,
-- and to external:payouts when the app's backend confirms it paid.
-- status: requested -> approved -> paid, or requested/approved -> rejected.
CREATE TABLE IF NOT EXISTS payouts (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    coins BIGINT NOT NULL CHECK (coins > 0),
    status TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_transfer_id TEXT NOT NULL REFERENCES ledger_transfers (id),
    settle_transfer_id TEXT REFERENCES ledger_transfers (id),
    created_at DOUBLE PRECISION NOT NULL,
    decided_at DOUBLE PRECISION,
    decided_by TEXT,
    note TEXT,
    paid_at DOUBLE PRECISION,
    reference TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS payouts_idempotency ON payouts (user_id, idempotency_key);
CREATE INDEX IF NOT EXISTS payouts_user ON payouts (user_id, id);
CREATE INDEX IF NOT EXISTS payouts_status ON payouts (status, id);
CREATE INDEX IF NOT EXISTS ledger_transfers_created ON ledger_transfers (created_at);
