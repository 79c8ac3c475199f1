-- RTMP stream keys: one per live room, set and revoked by its owner
-- (api/rtmp.py). Only the SHA-256 of the key is kept; the key itself is shown
-- once, when it is made.
CREATE TABLE IF NOT EXISTS room_stream_keys (
    room_id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
