-- Times are unix seconds (UTC). Ids are UUIDs in their hyphenated text form.

CREATE TABLE users (
    id            TEXT    PRIMARY KEY NOT NULL,
    email         TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

-- One row per refresh token ever issued. A login starts a family; every Refresh
-- revokes the presented token, points it at its successor (replaced_by) and adds the
-- successor to the same family. Presenting a token that has a successor is reuse.
CREATE TABLE refresh_tokens (
    id          TEXT    PRIMARY KEY NOT NULL,
    user_id     TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   TEXT    NOT NULL,
    token_hash  BLOB    NOT NULL UNIQUE,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    replaced_by TEXT    REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);

-- Failed logins per (normalised) email, for throttling. Kept for unknown emails too,
-- so throttling does not reveal which emails have accounts.
CREATE TABLE login_failures (
    email     TEXT    NOT NULL,
    failed_at INTEGER NOT NULL
);
CREATE INDEX login_failures_email ON login_failures (email, failed_at);
