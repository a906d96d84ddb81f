-- The webhook outbox (SPEC §4). A row is written in the same transaction as the
-- transition it reports, so an acknowledged transition always has its event, even
-- across a crash. `body` holds the exact bytes POSTed: every retry signs and sends
-- the same bytes. Delivered rows are deleted; rows given up stay as `failed`, so the
-- table holds at most what is undelivered. Times are unix milliseconds (UTC).

CREATE TABLE webhook_outbox (
    session_id       TEXT NOT NULL,
    seq              INTEGER NOT NULL,     -- the transition's seq: delivery order per session
    event_id         TEXT NOT NULL UNIQUE, -- UUID, sent as X-Idv-Event-Id
    url              TEXT NOT NULL,        -- resolved at the transition: callback_url or the default
    body             BLOB NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending', -- 'pending' | 'failed'
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,     -- the transition time
    first_attempt_at INTEGER,              -- give-up is counted from here
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,                 -- a short, sanitized note on the last failure
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;

CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE state = 'pending';
