-- The person's data sealed at rest and record retention; as migrations/0007 for SQLite.
ALTER TABLE sessions ADD COLUMN data_key_id TEXT;
ALTER TABLE sessions ADD COLUMN data_key BYTEA;
CREATE INDEX sessions_data_key_id ON sessions (data_key_id) WHERE data_key_id IS NOT NULL;
CREATE INDEX sessions_ended ON sessions (decided_at) WHERE decided_at IS NOT NULL;
CREATE INDEX idempotency_keys_by_session ON idempotency_keys (session_id);
