-- trueup's ledger: evaluation runs and the violations they saw.

CREATE TABLE runs (
    id              BIGSERIAL PRIMARY KEY,
    invariant       TEXT        NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ,
    -- running | succeeded | failed | cancelled
    status          TEXT        NOT NULL,
    rows_left       BIGINT      NOT NULL DEFAULT 0,
    rows_right      BIGINT      NOT NULL DEFAULT 0,
    -- every violation observed, including those beyond the budget
    observed        BIGINT      NOT NULL DEFAULT 0,
    -- kind -> count
    counts          JSONB       NOT NULL DEFAULT '{}',
    not_yet_due     BIGINT      NOT NULL DEFAULT 0,
    -- rows skipped because a key column was NULL
    null_keys       BIGINT      NOT NULL DEFAULT 0,
    truncated       BOOLEAN     NOT NULL DEFAULT FALSE,
    new_count       BIGINT      NOT NULL DEFAULT 0,
    open_count      BIGINT      NOT NULL DEFAULT 0,
    reopened_count  BIGINT      NOT NULL DEFAULT 0,
    resolved_count  BIGINT      NOT NULL DEFAULT 0,
    error           TEXT
);
CREATE INDEX runs_by_invariant ON runs (invariant, id);

CREATE TABLE violations (
    id               BIGSERIAL PRIMARY KEY,
    fingerprint      TEXT        NOT NULL UNIQUE,
    invariant        TEXT        NOT NULL,
    kind             TEXT        NOT NULL,
    key              JSONB       NOT NULL,
    -- open | resolved | reopened
    status           TEXT        NOT NULL,
    first_seen       TIMESTAMPTZ NOT NULL,
    last_seen        TIMESTAMPTZ NOT NULL,
    resolved_at      TIMESTAMPTZ,
    first_run_id     BIGINT      NOT NULL,
    last_run_id      BIGINT      NOT NULL,
    resolved_run_id  BIGINT,
    reopened_run_id  BIGINT,
    times_reopened   INTEGER     NOT NULL DEFAULT 0,
    event_at         TIMESTAMPTZ,
    evidence         JSONB       NOT NULL
);
CREATE INDEX violations_by_invariant ON violations (invariant, status, id);
CREATE INDEX violations_by_last_run ON violations (last_run_id);

-- What a running evaluation has seen so far. Merged into `violations` in one transaction
-- when the run completes, dropped when it fails: a failed run changes nothing.
CREATE TABLE run_observations (
    run_id       BIGINT      NOT NULL REFERENCES runs (id),
    -- the order the evaluation saw them in (key order for reconcile)
    seq          BIGINT      NOT NULL,
    fingerprint  TEXT        NOT NULL,
    invariant    TEXT        NOT NULL,
    kind         TEXT        NOT NULL,
    key          JSONB       NOT NULL,
    event_at     TIMESTAMPTZ,
    evidence     JSONB       NOT NULL,
    PRIMARY KEY (run_id, fingerprint)
);
