-- What each user stores and has in progress, for quotas and per-user limits. Both live
-- in the database, not in a process, so every replica of the service sees one count.

-- Stored bytes and files per user, kept by triggers in the same transaction as the
-- `files` row that changes them: whatever path inserts or deletes a file, the count
-- cannot drift from the index.
CREATE TABLE user_usage (
    user_id      TEXT    PRIMARY KEY NOT NULL,
    stored_bytes INTEGER NOT NULL DEFAULT 0,
    stored_files INTEGER NOT NULL DEFAULT 0
);
INSERT INTO user_usage (user_id, stored_bytes, stored_files)
    SELECT user_id, SUM(size), COUNT(*) FROM files GROUP BY user_id;

CREATE TRIGGER files_counted_in AFTER INSERT ON files
BEGIN
    INSERT INTO user_usage (user_id, stored_bytes, stored_files)
        VALUES (NEW.user_id, NEW.size, 1)
        ON CONFLICT (user_id) DO UPDATE SET
            stored_bytes = stored_bytes + NEW.size,
            stored_files = stored_files + 1;
END;

CREATE TRIGGER files_counted_out AFTER DELETE ON files
BEGIN
    UPDATE user_usage
        SET stored_bytes = stored_bytes - OLD.size, stored_files = stored_files - 1
        WHERE user_id = OLD.user_id;
END;

-- The bytes a resumable session holds against its user's quota: its declared size,
-- or, without one, as far as its chunks have reached. Given back with the session row.
ALTER TABLE upload_sessions ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0;
UPDATE upload_sessions SET reserved = COALESCE(declared_size, received);
CREATE INDEX upload_sessions_by_user ON upload_sessions (user_id);

-- Uploads being received right now: an Upload stream or a PutFile ('file', which
-- counts as a file and holds `bytes` of the quota), or a session chunk being stored
-- ('chunk', whose bytes its session holds). A row is a lease: the process receiving
-- the upload renews `expires_at` while it runs and deletes the row when it ends, so
-- the row of a process that died expires on its own and is swept.
CREATE TABLE uploads_in_flight (
    id         TEXT    PRIMARY KEY NOT NULL,
    user_id    TEXT    NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('file', 'chunk')),
    bytes      INTEGER NOT NULL DEFAULT 0,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX uploads_in_flight_by_user ON uploads_in_flight (user_id);
CREATE INDEX uploads_in_flight_expiry ON uploads_in_flight (expires_at);
