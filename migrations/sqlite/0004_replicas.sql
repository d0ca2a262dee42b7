-- Scheduled ticks, claimed under a lease so that each is evaluated once across replicas, and
-- the replicas themselves.

CREATE TABLE ticks (
    invariant    TEXT    NOT NULL,
    fire_at      TEXT    NOT NULL,
    owner        TEXT    NOT NULL,
    lease_until  TEXT    NOT NULL,
    finished     INTEGER NOT NULL DEFAULT 0,
    run_id       INTEGER,
    taken_over   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (invariant, fire_at)
);
CREATE INDEX ticks_unfinished ON ticks (finished, lease_until);

CREATE TABLE replicas (
    id            TEXT PRIMARY KEY,
    started_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL
);
