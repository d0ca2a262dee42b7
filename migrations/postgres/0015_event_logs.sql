-- trueup's own event logs (`event_logs:` in trueup.yaml): each event once per log, by its id.
-- `source` and `position` say which delivery stored it (`nats:SOURCE/STREAM` and its stream
-- sequence, `redis:SOURCE/KEY` and its entry id, `webhook` and none): a stream that delivers the same
-- message again after a crash (stored, not yet acknowledged) is recognised by its position
-- and neither stored nor counted twice.
CREATE TABLE log_events (
    id                BIGSERIAL PRIMARY KEY,
    log               TEXT    NOT NULL,
    event_id          TEXT    NOT NULL,
    event_at          TIMESTAMPTZ,
    ingested_at       TIMESTAMPTZ NOT NULL,
    source            TEXT    NOT NULL,
    position          TEXT,
    -- Deliveries of this event id: 1, plus one per duplicate in log_duplicates.
    deliveries        BIGINT  NOT NULL DEFAULT 1,
    last_delivered_at TIMESTAMPTZ NOT NULL,
    headers           JSONB   NOT NULL,
    payload           BYTEA   NOT NULL,
    UNIQUE (log, event_id)
);
CREATE INDEX log_events_ingested ON log_events (log, ingested_at);
-- A log read as a source, in capture order.
CREATE INDEX log_events_order ON log_events (log, id);

-- Each further delivery of an event id already stored: when and from where. Unique by
-- position, so a stream's redelivery of a duplicate is counted once.
CREATE TABLE log_duplicates (
    id           BIGSERIAL PRIMARY KEY,
    log          TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    source       TEXT NOT NULL,
    position     TEXT,
    delivered_at TIMESTAMPTZ NOT NULL,
    UNIQUE (log, event_id, source, position)
);
