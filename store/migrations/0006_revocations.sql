-- Revocation (api/admin.py): suspended users and revoked token ids (jti). Every
-- node keeps both in memory, loaded at start and kept in step over the bus.
CREATE TABLE IF NOT EXISTS suspended_users (
    user_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL DEFAULT '',
    suspended_by TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti TEXT PRIMARY KEY,
    revoked_by TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
