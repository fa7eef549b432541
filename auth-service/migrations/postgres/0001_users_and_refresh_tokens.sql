-- The PostgreSQL twin of migrations/sqlite/0001: the same tables, columns and rules, so
-- one query text serves both. Times are unix seconds (UTC), as BIGINT; ids are UUIDs in
-- their hyphenated text form.

CREATE TABLE users (
    id            TEXT   PRIMARY KEY NOT NULL,
    email         TEXT   NOT NULL UNIQUE,
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

-- One row per refresh token ever issued. A login starts a family; every Refresh
-- revokes the presented token, points it at its successor (replaced_by) and adds the
-- successor to the same family. Presenting a token that has a successor is reuse.
CREATE TABLE refresh_tokens (
    id          TEXT   PRIMARY KEY NOT NULL,
    user_id     TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   TEXT   NOT NULL,
    token_hash  BYTEA  NOT NULL UNIQUE,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    replaced_by TEXT   REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);

-- Failed logins per (normalised) email, for throttling. Kept for unknown emails too,
-- so throttling does not reveal which emails have accounts. SQLite's tables have a
-- rowid; here the id is explicit.
CREATE TABLE login_failures (
    id        BIGSERIAL PRIMARY KEY,
    email     TEXT   NOT NULL,
    failed_at BIGINT NOT NULL
);
CREATE INDEX login_failures_email ON login_failures (email, failed_at);
