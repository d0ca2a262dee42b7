-- The alert state of each invariant, and the notifications waiting to be delivered.

CREATE TABLE alerts (
    invariant          TEXT PRIMARY KEY,
    state              TEXT        NOT NULL,
    active_since       TIMESTAMPTZ,
    last_violating_at  TIMESTAMPTZ,
    last_notified_at   TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL
);

-- Written in the same transaction as the alert change that caused it, delivered by a worker
-- with retries: an SMTP or webhook outage delays a notification, never loses it.
CREATE TABLE outbox (
    id               BIGSERIAL PRIMARY KEY,
    dedup_key        TEXT        NOT NULL UNIQUE,
    channel          TEXT        NOT NULL,
    payload          JSONB       NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    attempts         INTEGER     NOT NULL DEFAULT 0,
    claimed_until    TIMESTAMPTZ,
    delivered_at     TIMESTAMPTZ,
    last_error       TEXT
);
CREATE INDEX outbox_due ON outbox (delivered_at, next_attempt_at);
