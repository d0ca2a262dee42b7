-- What became of each logged event, per invariant that reads its log on the left:
-- `processed` (a full run found it downstream), `missing` or `mismatched` (a full run found
-- it violated), `replayed` (a replay action for its key applied). Written when such a run
-- completes and when a replay action applies; `key` is the event's key as the invariant's
-- violations hold it, so a violation's change reaches its events.
CREATE TABLE log_outcomes (
    log              TEXT NOT NULL,
    invariant        TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    key              TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    processed_at     TIMESTAMPTZ NOT NULL,
    target_record_id TEXT,
    run_id           BIGINT,
    plan_id          BIGINT,
    action_seq       BIGINT,
    PRIMARY KEY (log, invariant, event_id)
);
CREATE INDEX log_outcomes_key ON log_outcomes (log, invariant, key);
CREATE INDEX log_outcomes_event ON log_outcomes (log, event_id);

-- Per log and invariant: every event up to this sequence has its first outcome (events
-- after it, or still inside their grace period then, are looked at again by the next run).
CREATE TABLE log_outcome_marks (
    log       TEXT NOT NULL,
    invariant TEXT NOT NULL,
    through   BIGINT NOT NULL,
    PRIMARY KEY (log, invariant)
);
