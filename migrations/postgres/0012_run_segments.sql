-- A reconcile split into segments of its key range, claimed by any replica on the store and
-- merged into one run. A segment is pending, claimed (by `owner` until `lease_until`), done
-- (its stats kept for the run's totals) or failed (its error fails the run). `attempt` grows
-- with every claim: observations staged under an older attempt (a replica that died, or lost
-- its lease, mid-segment) never reach the ledger.
CREATE TABLE run_segments (
    run_id       BIGINT      NOT NULL REFERENCES runs (id),
    seq          INTEGER     NOT NULL,
    invariant    TEXT        NOT NULL,
    -- the invariant's definition hash: a replica evaluates only a definition it holds
    definition   TEXT        NOT NULL,
    low          BIGINT      NOT NULL,
    high         BIGINT      NOT NULL,
    status       TEXT        NOT NULL DEFAULT 'pending',
    owner        TEXT,
    lease_until  TIMESTAMPTZ,
    attempt      INTEGER     NOT NULL DEFAULT 0,
    stats        JSONB,
    error        TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX run_segments_by_status ON run_segments (status, lease_until);

-- Which segment, and which attempt at it, staged an observation (NULL: an unsplit run).
ALTER TABLE run_observations ADD COLUMN segment INTEGER;
ALTER TABLE run_observations ADD COLUMN attempt INTEGER;
