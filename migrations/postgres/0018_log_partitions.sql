-- The PostgreSQL store keeps each event log's days in partitions of their own, so that
-- retention drops a whole day instead of deleting its rows one by one. `log_events` becomes
-- a table partitioned by (log, ingested_at): one partition per log and ingest day (UTC),
-- made ahead of the day by `trueup serve` (and here for each day that holds events already)
-- and listed in `log_partitions`, plus a default partition for any event without one
-- (captured before its day was made ready). A partitioned table cannot be unique on (log, event_id) across its
-- partitions, so each log's event ids are kept once in `log_event_ids`, which deduplicates.

CREATE TABLE log_event_ids (
    log         TEXT        NOT NULL,
    event_id    TEXT        NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (log, event_id)
);
INSERT INTO log_event_ids (log, event_id, ingested_at)
    SELECT log, event_id, ingested_at FROM log_events;

CREATE TABLE log_events_by_day (
    id                BIGINT      NOT NULL DEFAULT nextval('log_events_id_seq'),
    log               TEXT        NOT NULL,
    event_id          TEXT        NOT NULL,
    event_at          TIMESTAMPTZ,
    ingested_at       TIMESTAMPTZ NOT NULL,
    source            TEXT        NOT NULL,
    position          TEXT,
    deliveries        BIGINT      NOT NULL DEFAULT 1,
    last_delivered_at TIMESTAMPTZ NOT NULL,
    headers           JSONB       NOT NULL,
    payload           BYTEA       NOT NULL,
    PRIMARY KEY (id, log, ingested_at)
) PARTITION BY RANGE (log, ingested_at);
CREATE TABLE log_events_default PARTITION OF log_events_by_day DEFAULT;

-- The partitions made for each log's days.
CREATE TABLE log_partitions (
    log  TEXT NOT NULL,
    day  DATE NOT NULL,
    name TEXT NOT NULL UNIQUE,
    PRIMARY KEY (log, day)
);

-- Each day that holds events already gets its partition (named as src/store/log_days.rs
-- names them), so that they do not sit in the default partition, which PostgreSQL scans each
-- time it makes a partition.
DO $$
DECLARE
    d    RECORD;
    part TEXT;
BEGIN
    FOR d IN
        SELECT DISTINCT log, (ingested_at AT TIME ZONE 'UTC')::date AS day FROM log_events
    LOOP
        part := 'log_events_' || substr(encode(sha256(convert_to(d.log, 'UTF8')), 'hex'), 1, 16)
                || '_' || to_char(d.day, 'YYYYMMDD');
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF log_events_by_day FOR VALUES FROM (%L, %L) TO (%L, %L)',
            part,
            d.log, d.day::timestamp AT TIME ZONE 'UTC',
            d.log, (d.day + 1)::timestamp AT TIME ZONE 'UTC');
        INSERT INTO log_partitions (log, day, name) VALUES (d.log, d.day, part);
    END LOOP;
END
$$;

INSERT INTO log_events_by_day
    SELECT id, log, event_id, event_at, ingested_at, source, position, deliveries,
           last_delivered_at, headers, payload
    FROM log_events;
ALTER SEQUENCE log_events_id_seq OWNED BY log_events_by_day.id;
DROP TABLE log_events;
ALTER TABLE log_events_by_day RENAME TO log_events;
CREATE INDEX log_events_ingested ON log_events (log, ingested_at);
-- A log read as a source, in capture order.
CREATE INDEX log_events_order ON log_events (log, id);
CREATE INDEX log_events_event ON log_events (log, event_id);
