-- A device is bound by its issuer and `sub` together (SPEC §2): the same `sub` from
-- another issuer is another device. `user_id` keeps the `sub`; `issuer` is the `iss`,
-- NULL exactly while `user_id` is.
ALTER TABLE sessions ADD COLUMN issuer TEXT;

-- Sessions bound before this migration recorded no issuer. They get the empty issuer,
-- which no configured issuer has (names are not empty), so no device token matches it:
-- a session bound before the upgrade and still in progress can no longer be finished
-- by a device and expires; its decision shows `"issuer": null`.
UPDATE sessions SET issuer = '' WHERE user_id IS NOT NULL;
