-- trueup's ledger: evaluation runs and the violations they saw.

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    invariant       TEXT    NOT NULL,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT,
    -- running | succeeded | failed | cancelled
    status          TEXT    NOT NULL,
    rows_left       INTEGER NOT NULL DEFAULT 0,
    rows_right      INTEGER NOT NULL DEFAULT 0,
    -- every violation observed, including those beyond the budget
    observed        INTEGER NOT NULL DEFAULT 0,
    -- JSON object: kind -> count
    counts          TEXT    NOT NULL DEFAULT '{}',
    not_yet_due     INTEGER NOT NULL DEFAULT 0,
    -- rows skipped because a key column was NULL
    null_keys       INTEGER NOT NULL DEFAULT 0,
    truncated       INTEGER NOT NULL DEFAULT 0,
    new_count       INTEGER NOT NULL DEFAULT 0,
    open_count      INTEGER NOT NULL DEFAULT 0,
    reopened_count  INTEGER NOT NULL DEFAULT 0,
    resolved_count  INTEGER NOT NULL DEFAULT 0,
    error           TEXT
);
CREATE INDEX runs_by_invariant ON runs (invariant, id);

CREATE TABLE violations (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint      TEXT    NOT NULL UNIQUE,
    invariant        TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    key              TEXT    NOT NULL,
    -- open | resolved | reopened
    status           TEXT    NOT NULL,
    first_seen       TEXT    NOT NULL,
    last_seen        TEXT    NOT NULL,
    resolved_at      TEXT,
    first_run_id     INTEGER NOT NULL,
    last_run_id      INTEGER NOT NULL,
    resolved_run_id  INTEGER,
    reopened_run_id  INTEGER,
    times_reopened   INTEGER NOT NULL DEFAULT 0,
    event_at         TEXT,
    evidence         TEXT    NOT NULL
);
CREATE INDEX violations_by_invariant ON violations (invariant, status, id);
CREATE INDEX violations_by_last_run ON violations (last_run_id);

-- What a running evaluation has seen so far. Merged into `violations` in one transaction
-- when the run completes, dropped when it fails: a failed run changes nothing.
CREATE TABLE run_observations (
    run_id       INTEGER NOT NULL REFERENCES runs (id),
    -- the order the evaluation saw them in (key order for reconcile)
    seq          INTEGER NOT NULL,
    fingerprint  TEXT    NOT NULL,
    invariant    TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    event_at     TEXT,
    evidence     TEXT    NOT NULL,
    PRIMARY KEY (run_id, fingerprint)
);
