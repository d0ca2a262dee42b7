-- Incidents: a window and a scope, the phases people mark and their notes. The closure report
-- is stored with its content hash when the incident closes.

CREATE TABLE incidents (
    id              INTEGER     PRIMARY KEY AUTOINCREMENT,
    name            TEXT        NOT NULL UNIQUE,
    summary         TEXT,
    window_from     TEXT        NOT NULL,
    window_to       TEXT       ,
    -- The invariants named when it was opened; empty: every invariant with violations in the window.
    invariants      TEXT        NOT NULL,
    state           TEXT        NOT NULL,
    opened_by       TEXT        NOT NULL,
    opened_at       TEXT        NOT NULL,
    closed_by       TEXT,
    closed_at       TEXT       ,
    override_reason TEXT,
    report          TEXT,
    report_hash     TEXT
);

CREATE TABLE incident_events (
    id           INTEGER     PRIMARY KEY AUTOINCREMENT,
    incident_id  INTEGER     NOT NULL REFERENCES incidents (id),
    at           TEXT        NOT NULL,
    actor        TEXT        NOT NULL,
    -- phase | note
    kind         TEXT        NOT NULL,
    phase        TEXT,
    text         TEXT
);
CREATE INDEX incident_events_by_incident ON incident_events (incident_id, id);
