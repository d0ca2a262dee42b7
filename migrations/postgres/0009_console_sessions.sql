-- Web console sign-ins. Only the SHA-256 of a session id is kept: a copy of this table does
-- not let anyone in. The role is not stored: it is read from the token's entry in the
-- configuration on every request, so removing a token ends its sessions.

CREATE TABLE console_sessions (
    id_sha256   TEXT PRIMARY KEY,
    token_name  TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
