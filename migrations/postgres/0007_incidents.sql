-- Incidents: a window and a scope, the phases people mark and their notes. The closure report
-- is stored with its content hash when the incident closes.

CREATE TABLE incidents (
    id              BIGSERIAL   PRIMARY KEY,
    name            TEXT        NOT NULL UNIQUE,
    summary         TEXT,
    window_from     TIMESTAMPTZ NOT NULL,
    window_to       TIMESTAMPTZ,
    -- The invariants named when it was opened; empty: every invariant with violations in the window.
    invariants      JSONB       NOT NULL,
    state           TEXT        NOT NULL,
    opened_by       TEXT        NOT NULL,
    opened_at       TIMESTAMPTZ NOT NULL,
    closed_by       TEXT,
    closed_at       TIMESTAMPTZ,
    override_reason TEXT,
    report          JSONB,
    report_hash     TEXT
);

CREATE TABLE incident_events (
    id           BIGSERIAL   PRIMARY KEY,
    incident_id  BIGINT      NOT NULL REFERENCES incidents (id),
    at           TIMESTAMPTZ NOT NULL,
    actor        TEXT        NOT NULL,
    -- phase | note
    kind         TEXT        NOT NULL,
    phase        TEXT,
    text         TEXT
);
CREATE INDEX incident_events_by_incident ON incident_events (incident_id, id);
