-- The PostgreSQL twin of migrations/sqlite/0002 (which explains the columns).
-- `pending` is INTEGER so that SUM(pending) is a BIGINT, as COUNT(*) is.
ALTER TABLE login_failures ADD COLUMN client_address TEXT NOT NULL DEFAULT 'unknown';
ALTER TABLE login_failures ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
CREATE INDEX login_failures_client ON login_failures (email, client_address, failed_at);
CREATE INDEX login_failures_age ON login_failures (failed_at);
