-- The PostgreSQL twin of migrations/sqlite/0002 (which explains the ledger).
CREATE TABLE multipart_uploads (
    key        TEXT    PRIMARY KEY NOT NULL,
    upload_id  TEXT    NOT NULL,
    abandoned  INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT  NOT NULL
);

ALTER TABLE upload_chunks ADD COLUMN etag TEXT;
