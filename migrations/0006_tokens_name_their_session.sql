-- Session tokens now carry the id of their session (`SessionToken` in actors/src/ids.rs).
-- A presented token that is not the session's own is checked against the session it
-- names, by primary key, to tell a token of another session (403) from none (401). The
-- index over token hashes, a random-keyed B-tree that every create dirtied a page of,
-- is no longer needed.
--
-- Tokens issued before carry no id. Their hashes are kept here, for the same check;
-- a session's current hash stays in `sessions.token_hash` as before. Nothing is added
-- here after this migration.
CREATE TABLE legacy_session_tokens (
    token_hash BLOB PRIMARY KEY,
    session_id TEXT NOT NULL
) WITHOUT ROWID;

INSERT OR IGNORE INTO legacy_session_tokens (token_hash, session_id)
    SELECT token_hash, id FROM sessions;

DROP INDEX sessions_token;
