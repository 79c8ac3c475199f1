-- Chat, read positions and room bans (issue 5: live rooms, chat, presence).

-- Messages of every room, numbered per room by rooms.last_seq (gap-free).
-- expires_at is set for rooms with chat_ttl_seconds; the sweeper deletes them.
CREATE TABLE IF NOT EXISTS chat_messages (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL,
    client_id TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX IF NOT EXISTS chat_messages_room_seq ON chat_messages (room_id, seq);
-- A retried chat:send with the same clientId finds its message here (NULLs never collide).
CREATE UNIQUE INDEX IF NOT EXISTS chat_messages_client ON chat_messages (room_id, user_id, client_id);
CREATE INDEX IF NOT EXISTS chat_messages_expiry ON chat_messages (expires_at);

-- How far each reader has read, per room.
CREATE TABLE IF NOT EXISTS chat_reads (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    up_to_seq BIGINT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- Kicked viewers may not rejoin a room until banned_until.
CREATE TABLE IF NOT EXISTS room_bans (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    banned_until DOUBLE PRECISION NOT NULL,
    banned_by TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
