-- Notices between an alert's change and the outbox: each waits for its group (routes'
-- group_wait and group_interval) or is held by a silence; a group goes out as one outbox
-- message. Written in the same transaction as the alert change, like the outbox.
CREATE TABLE notices (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    invariant    TEXT    NOT NULL,
    notice       TEXT    NOT NULL,
    -- The payload's dedup key: queuing the same notice twice keeps one.
    notice_key   TEXT    NOT NULL UNIQUE,
    channel      TEXT    NOT NULL,
    group_key    TEXT    NOT NULL,
    group_labels TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    due_at       TEXT    NOT NULL,
    -- The silence holding it, while `outcome` is NULL.
    silenced_by  INTEGER,
    -- sent (in the outbox message `dedup_key`), summarised (in a summary queued when its
    -- silence ended) or dropped (its alert had resolved when its silence ended).
    outcome      TEXT,
    outcome_at   TEXT,
    dedup_key    TEXT
);
CREATE INDEX notices_waiting ON notices (outcome, due_at);
CREATE INDEX notices_held ON notices (silenced_by, outcome);

-- When each group last sent a notice, for group_interval.
CREATE TABLE notice_groups (
    group_key    TEXT PRIMARY KEY,
    last_sent_at TEXT NOT NULL
);

-- Silences: while one is active, the notices of the alerts it matches are held.
CREATE TABLE silences (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    matchers    TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    created_by  TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    ends_at     TEXT    NOT NULL,
    expired_at  TEXT,
    expired_by  TEXT,
    -- When its held notices were settled after it ended.
    released_at TEXT
);
CREATE INDEX silences_ends ON silences (released_at, ends_at);
