-- The PostgreSQL twin of migrations/sqlite/0003 (which explains the counts and leases).
-- SUM over a BIGINT column is NUMERIC here: queries cast such sums back to BIGINT.

CREATE TABLE user_usage (
    user_id      TEXT   PRIMARY KEY NOT NULL,
    stored_bytes BIGINT NOT NULL DEFAULT 0,
    stored_files BIGINT NOT NULL DEFAULT 0
);
INSERT INTO user_usage (user_id, stored_bytes, stored_files)
    SELECT user_id, SUM(size), COUNT(*) FROM files GROUP BY user_id;

-- The counts change in the same transaction as the `files` row, as on SQLite. Two
-- transactions adding files of one user meet on the user's `user_usage` row lock.
CREATE FUNCTION files_count_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_usage (user_id, stored_bytes, stored_files)
        VALUES (NEW.user_id, NEW.size, 1)
        ON CONFLICT (user_id) DO UPDATE SET
            stored_bytes = user_usage.stored_bytes + NEW.size,
            stored_files = user_usage.stored_files + 1;
    RETURN NULL;
END;
$$;
CREATE TRIGGER files_counted_in AFTER INSERT ON files
    FOR EACH ROW EXECUTE FUNCTION files_count_in();

CREATE FUNCTION files_count_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE user_usage
        SET stored_bytes = stored_bytes - OLD.size, stored_files = stored_files - 1
        WHERE user_id = OLD.user_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER files_counted_out AFTER DELETE ON files
    FOR EACH ROW EXECUTE FUNCTION files_count_out();

ALTER TABLE upload_sessions ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0;
UPDATE upload_sessions SET reserved = COALESCE(declared_size, received);
CREATE INDEX upload_sessions_by_user ON upload_sessions (user_id);

CREATE TABLE uploads_in_flight (
    id         TEXT   PRIMARY KEY NOT NULL,
    user_id    TEXT   NOT NULL,
    kind       TEXT   NOT NULL CHECK (kind IN ('file', 'chunk')),
    bytes      BIGINT NOT NULL DEFAULT 0,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX uploads_in_flight_by_user ON uploads_in_flight (user_id);
CREATE INDEX uploads_in_flight_expiry ON uploads_in_flight (expires_at);
