-- Failed logins are keyed by (email, client address): LOGIN_MAX_FAILURES per pair, and
-- a looser LOGIN_MAX_FAILURES_PER_EMAIL across all addresses, so a stranger's failures
-- from elsewhere do not lock the owner out. A login claims its row before hashing (as
-- a failure) and deletes it on success, so concurrent attempts cannot overshoot.
-- `pending` marks a claim whose password is still being checked: it counts against the
-- limits like a failure, but a refusal caused by attempts in flight says "retry in a
-- second", not "wait out the window".
-- Rows from before this migration keep counting toward the per-email ceiling under
-- the address 'unknown'.
ALTER TABLE login_failures ADD COLUMN client_address TEXT NOT NULL DEFAULT 'unknown';
ALTER TABLE login_failures ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
CREATE INDEX login_failures_client ON login_failures (email, client_address, failed_at);
-- The purge deletes by age alone.
CREATE INDEX login_failures_age ON login_failures (failed_at);
