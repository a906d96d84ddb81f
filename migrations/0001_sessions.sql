-- Sessions, their transition log, idempotency keys and users.
-- Times are unix milliseconds (UTC). Personal data lives only in
-- `registration` and `shared_data`, which are set to NULL (never flagged) when purged.

CREATE TABLE sessions (
    id                    TEXT PRIMARY KEY,
    owner                 TEXT NOT NULL,      -- name of the API key that created it
    token_hash            BLOB NOT NULL,      -- SHA-256 of the session token
    status                TEXT NOT NULL,
    seq                   INTEGER NOT NULL,
    scopes                TEXT NOT NULL,      -- JSON array of strings
    vendor_data           TEXT,
    external_reference_id TEXT,
    registration          TEXT,               -- JSON object, personal data
    redirect_url          TEXT,
    callback_url          TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    expires_at            INTEGER NOT NULL,
    decided_at            INTEGER,
    user_id               TEXT,               -- the bound device's sub
    is_consented          INTEGER,            -- NULL until decided
    consented_at          INTEGER,
    shared_data           TEXT,               -- JSON object, personal data
    purged_at             INTEGER             -- set when retention purged a confirmed session
);

CREATE INDEX sessions_live ON sessions (expires_at)
    WHERE status IN ('initialized', 'retrieved');
CREATE INDEX sessions_token ON sessions (token_hash);

CREATE TABLE session_events (
    session_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    status     TEXT NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;

CREATE TABLE idempotency_keys (
    owner        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    session_id   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;

CREATE TABLE users (
    owner      TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner, user_id)
) WITHOUT ROWID;
