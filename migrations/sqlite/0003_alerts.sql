-- The alert state of each invariant, and the notifications waiting to be delivered.

CREATE TABLE alerts (
    invariant          TEXT PRIMARY KEY,
    state              TEXT NOT NULL,
    active_since       TEXT,
    last_violating_at  TEXT,
    last_notified_at   TEXT,
    updated_at         TEXT NOT NULL
);

-- Written in the same transaction as the alert change that caused it, delivered by a worker
-- with retries: an SMTP or webhook outage delays a notification, never loses it.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key        TEXT    NOT NULL UNIQUE,
    channel          TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    created_at       TEXT    NOT NULL,
    next_attempt_at  TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    claimed_until    TEXT,
    delivered_at     TEXT,
    last_error       TEXT
);
CREATE INDEX outbox_due ON outbox (delivered_at, next_attempt_at);
