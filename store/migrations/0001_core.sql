-- Users are known by the id in their token (`sub`); a row appears on first sight.
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION
);
