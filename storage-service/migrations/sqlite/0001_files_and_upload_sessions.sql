-- The index of stored files and of resumable upload sessions. The bytes live in the
-- object store; a file is visible exactly when its row exists, and its row is written
-- only after its object is complete.
-- Times are unix milliseconds (UTC).

CREATE TABLE files (
    key          TEXT    PRIMARY KEY NOT NULL,
    user_id      TEXT    NOT NULL,
    filename     TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX files_newest_first ON files (user_id, created_at DESC, key DESC);

CREATE TABLE upload_sessions (
    id              TEXT    PRIMARY KEY NOT NULL,
    user_id         TEXT    NOT NULL,
    key             TEXT    NOT NULL UNIQUE,
    filename        TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    declared_size   INTEGER,
    declared_sha256 TEXT,
    received        INTEGER NOT NULL DEFAULT 0,
    -- 'open' while chunks are accepted; 'completing' while CompleteUpload assembles it.
    state           TEXT    NOT NULL DEFAULT 'open',
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
);
CREATE INDEX upload_sessions_expiry ON upload_sessions (expires_at);

-- The acknowledged chunks of a session, each staged as its own object.
CREATE TABLE upload_chunks (
    session_id TEXT    NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    start      INTEGER NOT NULL,
    length     INTEGER NOT NULL,
    PRIMARY KEY (session_id, start)
);
