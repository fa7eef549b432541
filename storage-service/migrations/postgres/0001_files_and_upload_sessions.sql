-- The PostgreSQL twin of migrations/sqlite/0001 (which explains the tables): the same
-- tables, columns and rules, so one query text serves both. Times are unix milliseconds
-- (UTC) and sizes bytes, as BIGINT.

CREATE TABLE files (
    key          TEXT   PRIMARY KEY NOT NULL,
    user_id      TEXT   NOT NULL,
    filename     TEXT   NOT NULL,
    content_type TEXT   NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT   NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX files_newest_first ON files (user_id, created_at DESC, key DESC);

CREATE TABLE upload_sessions (
    id              TEXT   PRIMARY KEY NOT NULL,
    user_id         TEXT   NOT NULL,
    key             TEXT   NOT NULL UNIQUE,
    filename        TEXT   NOT NULL,
    content_type    TEXT   NOT NULL,
    declared_size   BIGINT,
    declared_sha256 TEXT,
    received        BIGINT NOT NULL DEFAULT 0,
    state           TEXT   NOT NULL DEFAULT 'open',
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);
CREATE INDEX upload_sessions_expiry ON upload_sessions (expires_at);

CREATE TABLE upload_chunks (
    session_id TEXT   NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    start      BIGINT NOT NULL,
    length     BIGINT NOT NULL,
    PRIMARY KEY (session_id, start)
);
