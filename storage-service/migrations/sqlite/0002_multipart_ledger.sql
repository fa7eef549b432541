-- Every S3 multipart upload storage-service starts, until it is completed or aborted.
-- An unfinished multipart upload keeps its parts on S3 until someone aborts it by id,
-- so the id is written here before the first part is sent. A row whose abort failed
-- (S3 unreachable), or that a previous run of the service left behind, is abandoned;
-- the periodic cleanup aborts it again until S3 confirms.
CREATE TABLE multipart_uploads (
    key        TEXT    PRIMARY KEY NOT NULL,
    upload_id  TEXT    NOT NULL,
    abandoned  INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

-- On S3 a session's chunks are the parts of its multipart upload: the part's ETag,
-- needed to complete it. (On a local directory chunks are staged objects: no ETag.)
ALTER TABLE upload_chunks ADD COLUMN etag TEXT;
