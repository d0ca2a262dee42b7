-- Closure reports: the report's timeline reads the audit log by target, and a closed
-- incident (its frozen report with it) never changes again.

CREATE INDEX audit_log_by_target ON audit_log (target, id);

-- The frozen report is kept byte for byte (its hash covers those bytes); JSONB would
-- reorder its keys and drop its formatting.
ALTER TABLE incidents ALTER COLUMN report TYPE TEXT USING report::text;

CREATE FUNCTION incidents_closed_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a closed incident does not change';
END $$;
CREATE TRIGGER incidents_closed_frozen BEFORE UPDATE ON incidents
    FOR EACH ROW WHEN (OLD.state = 'closed') EXECUTE FUNCTION incidents_closed_frozen();
