-- The retention sweeper deletes idempotency keys once their 24 h window is over
-- (SPEC §3); this index lets it find them without scanning every key it holds.

CREATE INDEX idempotency_keys_by_created_at ON idempotency_keys (created_at);
