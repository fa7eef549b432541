-- The PostgreSQL twin of migrations/sqlite/0005 (which explains the columns).
ALTER TABLE upload_sessions ADD COLUMN digest BYTEA;
ALTER TABLE upload_sessions ADD COLUMN digested BIGINT;
ALTER TABLE upload_sessions ADD COLUMN claimed_until BIGINT;

CREATE TABLE upload_chunks_storing (
    session_id TEXT   NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    end_offset BIGINT NOT NULL,
    part       BIGINT NOT NULL,
    token      TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, end_offset)
);

ALTER TABLE multipart_uploads ADD COLUMN claimed_until BIGINT;
