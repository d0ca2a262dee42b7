-- Closure reports: the report's timeline reads the audit log by target, and a closed
-- incident (its frozen report with it) never changes again.

CREATE INDEX audit_log_by_target ON audit_log (target, id);

CREATE TRIGGER incidents_closed_frozen BEFORE UPDATE ON incidents
WHEN OLD.state = 'closed'
BEGIN SELECT RAISE(ABORT, 'a closed incident does not change'); END;
