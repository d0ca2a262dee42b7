-- Replays are plans too: a kind, the window and reason they were made for, and per action the
-- event's time and partition. Partitions are leased so one worker delivers a partition's
-- events in order.

ALTER TABLE plans ADD COLUMN kind TEXT NOT NULL DEFAULT 'compensation';
ALTER TABLE plans ADD COLUMN meta JSONB NOT NULL DEFAULT '{}';
ALTER TABLE plan_actions ADD COLUMN partition_key TEXT NOT NULL DEFAULT '';
ALTER TABLE plan_actions ADD COLUMN event_at TIMESTAMPTZ;
CREATE INDEX plan_actions_partition ON plan_actions (plan_id, partition_key, seq);

CREATE TABLE plan_partitions (
    plan_id        BIGINT      NOT NULL REFERENCES plans (id),
    partition_key  TEXT        NOT NULL,
    lease_owner    TEXT,
    lease_until    TIMESTAMPTZ,
    PRIMARY KEY (plan_id, partition_key)
);
