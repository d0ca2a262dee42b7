-- Scheduled ticks, claimed under a lease so that each is evaluated once across replicas, and
-- the replicas themselves.

CREATE TABLE ticks (
    invariant    TEXT        NOT NULL,
    fire_at      TIMESTAMPTZ NOT NULL,
    owner        TEXT        NOT NULL,
    lease_until  TIMESTAMPTZ NOT NULL,
    finished     BOOLEAN     NOT NULL DEFAULT FALSE,
    run_id       BIGINT,
    taken_over   BOOLEAN     NOT NULL DEFAULT FALSE,
    PRIMARY KEY (invariant, fire_at)
);
CREATE INDEX ticks_unfinished ON ticks (finished, lease_until);

CREATE TABLE replicas (
    id            TEXT PRIMARY KEY,
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL
);
