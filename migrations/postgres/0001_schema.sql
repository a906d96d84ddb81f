-- The PostgreSQL store (SPEC §7), equivalent to the SQLite migrations one folder up
-- (one folder per engine; each engine's files are numbered on their own).
-- Times are unix milliseconds (UTC) as in SQLite, except the nodes' leases, which are
-- milliseconds of the database's own clock. Personal data lives only in
-- `sessions.registration`, `sessions.shared_data` and `files.bytes`: purged rows are
-- NULLed or deleted in the transaction of the transition, and the store vacuums
-- these tables soon after a purge (see actors/src/pg/mod.rs).

CREATE TABLE nodes (
    node_id     TEXT PRIMARY KEY,
    lease_until BIGINT NOT NULL       -- database-clock ms; 0: released
);

CREATE TABLE sessions (
    id                    TEXT PRIMARY KEY,
    owner                 TEXT NOT NULL,      -- name of the API key that created it
    token_hash            BYTEA NOT NULL,     -- SHA-256 of the session token
    status                TEXT NOT NULL,
    seq                   BIGINT NOT NULL,
    scopes                TEXT NOT NULL,      -- JSON array of strings
    vendor_data           TEXT,
    external_reference_id TEXT,
    registration          TEXT,               -- JSON object as sent, personal data
    redirect_url          TEXT,
    callback_url          TEXT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    expires_at            BIGINT NOT NULL,
    decided_at            BIGINT,
    user_id               TEXT,               -- the bound device's sub
    issuer                TEXT,               -- the bound device's iss
    is_consented          BOOLEAN,
    consented_at          BIGINT,
    shared_data           TEXT,               -- JSON object, personal data
    purged_at             BIGINT,
    owner_node            TEXT NOT NULL,      -- the node that runs its actor and timer
    owner_epoch           BIGINT NOT NULL     -- +1 at every change of owner: the commit guard
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 50);

-- Live sessions by expiry, this node's first (expiry sweep, restore, orphans).
CREATE INDEX sessions_live ON sessions (owner_node, expires_at)
    WHERE status IN ('initialized', 'retrieved');
CREATE INDEX sessions_token ON sessions (token_hash);
CREATE INDEX sessions_retention ON sessions (decided_at)
    WHERE status = 'confirmed' AND purged_at IS NULL;

CREATE TABLE session_events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    status     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE idempotency_keys (
    owner        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    session_id   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_by_created_at ON idempotency_keys (created_at);

CREATE TABLE users (
    owner      TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (owner, user_id)
);

-- Files are stored only on approve; `bytes` is personal data, deleted (never flagged)
-- by every purge. Deleting a session row would take its files with it.
CREATE TABLE files (
    file_id      TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    bytes        BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE (session_id, kind)
) WITH (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1,
        toast.autovacuum_vacuum_scale_factor = 0.0, toast.autovacuum_vacuum_threshold = 1);

-- The webhook outbox (SPEC §4), written in the transaction of its transition.
CREATE TABLE webhook_outbox (
    session_id       TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    event_id         TEXT NOT NULL UNIQUE,
    url              TEXT NOT NULL,
    body             BYTEA NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending', -- 'pending' | 'failed'
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    first_attempt_at BIGINT,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE state = 'pending';
