-- Binding the phone to the screen (SPEC §2): a session created with "binding": "code"
-- draws a two-digit code when the device retrieves it; approve must carry it. Wrong
-- codes are counted here, in the session's row, so the count survives a restart (and,
-- on PostgreSQL, a takeover by another node); the third ends the session `declined`
-- with the reason `binding_mismatch`. `shown_on` (browser, OS and since when) is read
-- from the first client that subscribed or fetched the QR; it is a hint for the person,
-- not personal data of theirs.
ALTER TABLE sessions ADD COLUMN binding TEXT NOT NULL DEFAULT 'none';  -- 'none' | 'code'
ALTER TABLE sessions ADD COLUMN binding_code TEXT;                     -- '10'..'99', from `retrieved`
ALTER TABLE sessions ADD COLUMN binding_misses INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN decline_reason TEXT;                   -- 'denied' | 'binding_mismatch'
ALTER TABLE sessions ADD COLUMN shown_browser TEXT;
ALTER TABLE sessions ADD COLUMN shown_os TEXT;
ALTER TABLE sessions ADD COLUMN shown_since INTEGER;                   -- unix milliseconds

-- Before binding, a session was declined only by a person's deny.
UPDATE sessions SET decline_reason = 'denied' WHERE status = 'declined';
