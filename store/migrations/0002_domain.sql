-- The shared domain tables. Features add their own tables in later migrations
-- (0003 chat, 0004 calls, 0005 wallets); these are the contract between them.

-- Rooms: live (a broadcaster and viewers), group, direct (two users' chat), call.
CREATE TABLE IF NOT EXISTS rooms (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    public INTEGER NOT NULL DEFAULT 1,
    status TEXT NOT NULL DEFAULT 'idle',
    owner_id TEXT,
    max_viewers BIGINT,
    chat_ttl_seconds DOUBLE PRECISION,
    last_seq BIGINT NOT NULL DEFAULT 0,
    stream_id TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    live_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS rooms_status ON rooms (status, created_at);

-- Members of direct and group rooms (live rooms are open to whoever may view).
CREATE TABLE IF NOT EXISTS room_members (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'member',
    joined_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX IF NOT EXISTS room_members_user ON room_members (user_id);

-- Direct rooms are unique per pair: user_a < user_b.
CREATE TABLE IF NOT EXISTS direct_rooms (
    user_a TEXT NOT NULL,
    user_b TEXT NOT NULL,
    room_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (user_a, user_b)
);

CREATE TABLE IF NOT EXISTS blocks (
    blocker_id TEXT NOT NULL,
    blocked_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);

-- Matches registered by the app's backend: user_a < user_b.
CREATE TABLE IF NOT EXISTS matches (
    user_a TEXT NOT NULL,
    user_b TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (user_a, user_b)
);

-- Every call leaves a record.
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    caller_id TEXT NOT NULL,
    callee_id TEXT NOT NULL,
    media TEXT NOT NULL,
    status TEXT NOT NULL,
    end_reason TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    answered_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    ends_at DOUBLE PRECISION,
    duration DOUBLE PRECISION NOT NULL DEFAULT 0,
    extensions BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS calls_caller ON calls (caller_id, created_at);
CREATE INDEX IF NOT EXISTS calls_callee ON calls (callee_id, created_at);
