-- Session tokens now carry the id of their session (`SessionToken` in actors/src/ids.rs);
-- the index over token hashes goes, as on SQLite (migrations/0006). Tokens issued before
-- carry no id: their hashes are kept here for the 401/403 check.
CREATE TABLE legacy_session_tokens (
    token_hash BYTEA PRIMARY KEY,
    session_id TEXT NOT NULL
);

INSERT INTO legacy_session_tokens (token_hash, session_id)
    SELECT token_hash, id FROM sessions
    ON CONFLICT DO NOTHING;

DROP INDEX sessions_token;
