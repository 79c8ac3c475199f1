-- Recordings of live rooms (api/recordings.py, recording/): one row per file.
-- status: recording, complete, interrupted (the node stopped or was killed
-- while recording), failed_disk_full, failed. node_url is the node that
-- writes the file (the room's origin), for serving it from other nodes.
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    stream_id TEXT,
    status TEXT NOT NULL,
    end_reason TEXT,
    storage_key TEXT NOT NULL,
    container TEXT NOT NULL,
    video_codec TEXT,
    audio_codec TEXT,
    node_id TEXT NOT NULL,
    node_url TEXT NOT NULL,
    started_by TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    duration DOUBLE PRECISION,
    size_bytes BIGINT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS recordings_by_room ON recordings (room_id, started_at);
CREATE INDEX IF NOT EXISTS recordings_by_status ON recordings (status);

-- A room's owner asks for every broadcast of the room to be recorded.
CREATE TABLE IF NOT EXISTS room_recording_settings (
    room_id TEXT PRIMARY KEY,
    record_all INTEGER NOT NULL DEFAULT 0,
    updated_by TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
