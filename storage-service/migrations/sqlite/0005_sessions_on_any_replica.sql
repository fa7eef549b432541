-- Resumable sessions that any replica can serve: nothing of a session lives in one
-- process's memory any more.

-- The running SHA-256 of the session's first `received` bytes (sha2's serialized
-- hasher state), written in the same compare-and-set that advances `received`, so the
-- replica completing the session finishes the digest instead of reading the object
-- back. NULL where the chunk store computes the digest itself (a local directory
-- hashes while assembling) and for sessions begun before this column.
ALTER TABLE upload_sessions ADD COLUMN digest BLOB;
-- How many bytes `digest` covers. It is used only while that is `received`: a chunk
-- committed by a replica of an earlier version (during a rolling upgrade) advances
-- `received` alone, and the session's object is then read back once instead.
ALTER TABLE upload_sessions ADD COLUMN digested INTEGER;

-- Until when a replica holds the session's completion ('completing') or its removal
-- after expiry: another replica takes it over only once this has passed (its holder
-- died), so two replicas never complete or abort one upload.
ALTER TABLE upload_sessions ADD COLUMN claimed_until INTEGER;

-- The chunks being stored right now, by the offset each ends at, with the part number
-- it takes. A chunk sent ahead of its predecessor, to any replica, finds the
-- predecessor here, takes the part after it, and waits for the session to reach its
-- offset. A row leaves with its chunk's commit (same transaction) or failure; one
-- whose replica died lapses at `expires_at`.
CREATE TABLE upload_chunks_storing (
    session_id TEXT    NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    end_offset INTEGER NOT NULL,
    part       INTEGER NOT NULL,
    -- Which announcement this is: a retry racing the original replaces its row, and
    -- each removes only its own.
    token      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (session_id, end_offset)
);

-- Until when a replica holds an abandoned multipart upload's abort.
ALTER TABLE multipart_uploads ADD COLUMN claimed_until INTEGER;
