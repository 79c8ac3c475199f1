-- Presence asks, at every connect and disconnect, who the user's contacts are:
-- matches and direct chats on either side of the pair. The primary keys
-- (user_a, user_b) serve only the first side, so the second was a full scan
-- of both tables per connect.
CREATE INDEX IF NOT EXISTS matches_user_b ON matches (user_b, user_a);
CREATE INDEX IF NOT EXISTS direct_rooms_user_b ON direct_rooms (user_b, user_a);
