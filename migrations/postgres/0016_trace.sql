-- A trace (`trueup trace`) finds the actions of a violation by its fingerprint.
CREATE INDEX plan_actions_fingerprint ON plan_actions (fingerprint);
