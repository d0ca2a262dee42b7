-- Compensation plans: the proposed actions for one invariant, bound to a content hash that
-- approvals refer to; each action's progress is checkpointed here while a plan applies.

CREATE TABLE plans (
    id                  INTEGER     PRIMARY KEY AUTOINCREMENT,
    invariant           TEXT        NOT NULL,
    -- The invariant's definition when proposed: a changed definition makes the plan stale.
    definition_hash     TEXT        NOT NULL,
    content_hash        TEXT        NOT NULL,
    severity            TEXT        NOT NULL,
    approvals_required  INTEGER     NOT NULL,
    has_manual          INTEGER     NOT NULL,
    proposed_by         TEXT        NOT NULL,
    proposed_at         TEXT        NOT NULL,
    expires_at          TEXT        NOT NULL,
    source_run_id       INTEGER,
    -- proposed | rejected | superseded | applying | applied | stopped
    state               TEXT        NOT NULL,
    state_by            TEXT,
    state_reason        TEXT,
    state_at            TEXT       ,
    action_count        INTEGER     NOT NULL,
    counts              TEXT        NOT NULL,
    verification        TEXT
);
CREATE INDEX plans_invariant ON plans (invariant, id);

CREATE TABLE plan_actions (
    plan_id          INTEGER     NOT NULL REFERENCES plans (id),
    seq              INTEGER     NOT NULL,
    fingerprint      TEXT        NOT NULL,
    violation_kind   TEXT        NOT NULL,
    key              TEXT        NOT NULL,
    evidence         TEXT        NOT NULL,
    spec             TEXT        NOT NULL,
    idempotency_key  TEXT        NOT NULL,
    -- pending | in_progress | applied | skipped | failed | manual
    status           TEXT        NOT NULL DEFAULT 'pending',
    attempts         INTEGER     NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      TEXT       ,
    outcome          TEXT,
    finished_at      TEXT       ,
    PRIMARY KEY (plan_id, seq)
);
CREATE INDEX plan_actions_work ON plan_actions (plan_id, status, seq);
CREATE INDEX plan_actions_idempotency ON plan_actions (idempotency_key, status);

CREATE TABLE plan_approvals (
    plan_id       INTEGER     NOT NULL REFERENCES plans (id),
    approver      TEXT        NOT NULL,
    content_hash  TEXT        NOT NULL,
    at            TEXT        NOT NULL,
    PRIMARY KEY (plan_id, approver)
);
