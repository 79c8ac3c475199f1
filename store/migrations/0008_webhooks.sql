-- Outgoing webhooks (webhooks/outbox.py, webhooks/dispatcher.py): a durable outbox.

-- The order of events per key (a room, a call, a user): last_seq is taken by an
-- upsert in the transaction that writes the event, so events of one key are
-- numbered in commit order on every node.
CREATE TABLE IF NOT EXISTS webhook_keys (
    event_key TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL DEFAULT 0
);

-- One row per event and endpoint. status: pending, delivered, failed (the dead letter).
-- A node claims a row by setting lease_owner and lease_until; an expired lease
-- (its node died) lets another node claim it again.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_key TEXT NOT NULL,
    seq BIGINT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    next_at DOUBLE PRECISION NOT NULL,
    give_up_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    delivered_at DOUBLE PRECISION,
    last_error TEXT
);
-- An event reaches an endpoint once: events written by every node of a cluster
-- for one fact (deterministic ids) collapse into one row here.
CREATE UNIQUE INDEX IF NOT EXISTS webhook_outbox_event ON webhook_outbox (event_id, endpoint);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (status, next_at);
CREATE INDEX IF NOT EXISTS webhook_outbox_key ON webhook_outbox (endpoint, event_key, seq);
