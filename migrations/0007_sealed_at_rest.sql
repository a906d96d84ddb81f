-- The person's data sealed at rest (SPEC §2 "At rest", actors/src/at_rest.rs), and
-- record retention (SPEC §2 "Records").
--
-- A session's own data key, sealed by the operator's `--data-key` whose id is kept
-- beside it (never the operator key). A row with a data key holds `registration`,
-- `vendor_data`, `external_reference_id` and `shared_data` sealed (base64), and its
-- files' `bytes` sealed; a row without one holds them in clear (written while no
-- `--data-key` was given). A purge sets a new key for what stays, destroying the one
-- that sealed the person's data.
ALTER TABLE sessions ADD COLUMN data_key_id TEXT;
ALTER TABLE sessions ADD COLUMN data_key BLOB;

-- Which operator keys seal stored data (checked at start, walked by `rekey`).
CREATE INDEX sessions_data_key_id ON sessions (data_key_id) WHERE data_key_id IS NOT NULL;

-- Ended sessions by the time they ended, for record retention (`decided_at` is set by
-- every terminal transition and only by one).
CREATE INDEX sessions_ended ON sessions (decided_at) WHERE decided_at IS NOT NULL;

-- A session's idempotency record, deleted with it.
CREATE INDEX idempotency_keys_by_session ON idempotency_keys (session_id);
