-- Every fire time of a scheduled invariant gets exactly one outcome: a run (`run_id`, linked
-- when the run begins, so that a takeover fails exactly that run) or a recorded miss (a fire
-- time that came while an earlier tick of the invariant was still unresolved).
ALTER TABLE ticks ADD COLUMN missed BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX ticks_by_invariant_unfinished ON ticks (invariant, finished);
