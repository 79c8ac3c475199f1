-- The inbox (rooms/inbox.py) and richer messages (rooms/chat.py).

-- A message may answer an earlier one of its room, and carry a reference to an
-- attachment the app uploaded elsewhere: JSON {url, mime, size}, never fetched.
ALTER TABLE chat_messages ADD COLUMN reply_to TEXT;
ALTER TABLE chat_messages ADD COLUMN attachment TEXT;

-- A direct chat a user hid from their inbox, up to which message: it comes back
-- when a newer message arrives.
CREATE TABLE IF NOT EXISTS chat_hidden (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    up_to_seq BIGINT NOT NULL,
    hidden_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
