-- Files uploaded by the device, stored only on approve (SPEC §2).
-- `bytes` is personal data (biometrics, documents): rows are deleted, never flagged,
-- when a session ends without consent or when retention purges a confirmed session.

CREATE TABLE files (
    file_id      TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES sessions (id),
    kind         TEXT NOT NULL,      -- the file scope it satisfies
    content_type TEXT NOT NULL,      -- image/jpeg or image/png
    size         INTEGER NOT NULL,
    bytes        BLOB NOT NULL,
    created_at   INTEGER NOT NULL,   -- unix milliseconds (the approve)
    UNIQUE (session_id, kind)
);

-- What the retention sweeper looks for: confirmed sessions not yet purged, oldest first.
CREATE INDEX sessions_retention ON sessions (decided_at)
    WHERE status = 'confirmed' AND purged_at IS NULL;
