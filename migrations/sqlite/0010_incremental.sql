-- Incremental reconciles: a run may read only the keys of rows changed since the last run.

-- Which rows a run looked at (`{"pass": "full"}` or `{"pass": "changed", ...}`; NULL before
-- this migration, when every run read everything), and the open violations on keys it did
-- not cover, left as they were.
ALTER TABLE runs ADD COLUMN coverage TEXT;
ALTER TABLE runs ADD COLUMN uncovered_count INTEGER NOT NULL DEFAULT 0;

-- The keys a running incremental evaluation covered. Like `run_observations`: read when the
-- run completes (only violations on these keys may resolve), dropped with the run either way.
CREATE TABLE run_coverage (
    run_id  INTEGER NOT NULL REFERENCES runs (id),
    key     TEXT    NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- Where an incremental reconcile's next run starts reading: each side's largest change-column
-- value as the last completed run began, the definition it was read under, and when the last
-- full pass completed.
CREATE TABLE watermarks (
    invariant   TEXT        PRIMARY KEY,
    definition  TEXT        NOT NULL,
    left_mark   TEXT,
    right_mark  TEXT,
    full_at     TEXT        NOT NULL,
    run_id      INTEGER     NOT NULL REFERENCES runs (id)
);
