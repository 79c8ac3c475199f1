-- Calls (issue 4). The calls table itself is in 0002_domain.sql; these are the
-- columns the call state machine needs for its two-party agreements, each set
-- and read by single conditional UPDATEs so that racing requests agree once.

-- Extension requests of the current round (reset when the call is extended).
ALTER TABLE calls ADD COLUMN extend_by_caller INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN extend_by_callee INTEGER NOT NULL DEFAULT 0;

-- Audio-to-video upgrade requests; media becomes 'video' when both asked.
ALTER TABLE calls ADD COLUMN upgrade_by_caller INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN upgrade_by_callee INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN upgraded_at DOUBLE PRECISION;

-- Live calls of a user are looked up on every connect and call:initiate.
CREATE INDEX IF NOT EXISTS calls_live ON calls (status);
