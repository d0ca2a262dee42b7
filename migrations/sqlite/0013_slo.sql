-- Consistency SLOs: each completed run records when its oldest violation still open after it
-- was opened (NULL: none open), so the time a violation stayed open past an objective's
-- `max_open` can be measured for any past window, under any objective declared later.
ALTER TABLE runs ADD COLUMN oldest_open_since TEXT;
-- Runs completed before this column existed say nothing about it.
ALTER TABLE runs ADD COLUMN slo_recorded INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_by_invariant_finished ON runs (invariant, finished_at);
